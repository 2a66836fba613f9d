"""Peak memory and CPU time of each party of a session (client, server, dealer), process trees included.

Why: a protocol's cost is not only latency. CrypTen's ranks, the ss dealer and SPU's parties are child
processes (fork-server children, or subprocesses under another interpreter), so the RSS of one process
and `getrusage(RUSAGE_SELF)` miss most of the work. This sampler reads Linux /proc at a fixed interval:

* a party is a root pid and every descendant that started after the measurement began (so that a fork
  server started by an earlier session is not charged to this one), minus the other parties' trees;
* processes whose name starts with `pi-ss-dealer` (the `ss` dealer a server spawns, `dealer="local"`) are
  charged to the dealer, not to the server that started them;
* peak memory: the largest sum of the proportional set sizes (PSS: shared pages split among sharers) of a
  party's live processes seen in one sample, and never less than the exact lifetime peak RSS (`VmHWM`) of
  any one of them (the client's own process excepted: its lifetime includes earlier sessions);
* CPU seconds: user + system time of every process seen, at its last sample. A process that exits between
  two samples loses at most one interval of CPU; the client's own process is read exactly at the end.

Why PSS is read only at new highs: reading /proc/PID/smaps_rollup walks the process's page tables under its
memory lock. For a session's 6-8 torch-sized processes that took 40-80 ms of CPU per sample (measured on the
2-core machine, planner-acc session), i.e. a third of a core at a 0.1 s interval, and it stalls the parties'
own allocations: in interleaved blocks with and without it, minionn-mnist's `ss` queries were 41 % slower at
load 2-3 and 10 % at load 5. `privinfer bench` measured that; the planner, timed without it, cannot predict it. So
every tick reads only the cheap counters (`/proc/PID/stat`, and VmRSS/VmHWM from `/proc/PID/status`), and a
party's PSS is read when the sum of its processes' RSS reaches a new high (by PSS_STEP). Memory grows by
mapping pages, which raises RSS, so the largest PSS sum is read within that step of its peak; what this misses
is PSS that grows without RSS (pages shared with a process that exits are re-divided among the others).

Elsewhere than Linux every figure is None. The interval (default 0.1 s) is recorded with the result.
"""
from __future__ import annotations

import os
import threading

DEALER_NAMES = ("pi-ss-dealer",)  # /proc/PID/comm of a dealer process (PR_SET_NAME in ss_worker)
_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _scan() -> dict[int, tuple[int, str, float, float]]:
    """{pid: (parent pid, name, cpu seconds, start seconds since boot)} of every live process."""
    out = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return out
    for d in entries:
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                raw = f.read()
            head, tail = raw.rsplit(")", 1)
            fields = tail.split()
        except (OSError, ValueError):
            continue
        if fields[0] == "Z":
            continue
        out[int(d)] = (int(fields[1]), head.split("(", 1)[1], (int(fields[11]) + int(fields[12])) / _TICK,
                       int(fields[19]) / _TICK)
    return out


def _status(pid: int) -> tuple[float, float]:
    """(current RSS, lifetime peak RSS) in MB from /proc/PID/status (kernel counters: cheap)."""
    cur = hwm = 0.0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    cur = int(line.split()[1]) / 1024.0
                elif line.startswith("VmHWM:"):
                    hwm = int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return cur, hwm


def _pss(pid: int, rss: float) -> float:
    """Proportional set size in MB (`rss` if it cannot be read).

    PSS divides each shared page among its sharers, so forked children (CrypTen ranks forked from a
    fork server that holds torch) are not counted twice when a tree is summed. Costly: see the docstring."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return rss


def _uptime() -> float:
    with open("/proc/uptime") as f:
        return float(f.read().split()[0])


PARTIES = ("client", "server", "dealer")
PSS_STEP = 1.02  # a party's PSS is read again when its RSS sum exceeds the last one read by 2 %


class PartySampler:
    """`with PartySampler() as s: s.add("server", pid) ...`; then `s.result()` -> {party: {peak_rss_mb, cpu_s}}.

    The client is this process (its own CPU read exactly with `os.times`); other parties are added by pid
    as they start. A party with no process seen reports None (e.g. no dealer).
    """

    def __init__(self, interval: float = 0.1):
        self.interval = interval
        self.enabled = os.path.isdir("/proc/self")
        self.me = os.getpid()
        self.roots: dict[int, str] = {self.me: "client"}
        self._cpu: dict[str, dict[int, float]] = {p: {} for p in PARTIES}
        self._peak: dict[str, float] = {p: 0.0 for p in PARTIES}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._self_cpu = 0.0
        self._client_start: float | None = None  # the client's memory before the session (a harness's own heap)
        self._rss_read: dict[str, float] = {p: 0.0 for p in PARTIES}  # RSS sum at the last PSS reading

    def add(self, party: str, pid: int | None) -> None:
        """Charge `pid` and its descendants to `party` ("server" or "dealer")."""
        if pid is not None and party in PARTIES:
            with self._lock:
                self.roots[int(pid)] = party

    def __enter__(self) -> "PartySampler":
        if self.enabled:
            self._t0 = _uptime() - 0.05
            t = os.times()
            self._self_cpu0 = t.user + t.system
            self._thread = threading.Thread(target=self._loop, daemon=True, name="privinfer-resources")
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            t = os.times()
            self._self_cpu = t.user + t.system - self._self_cpu0

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def _owner(self, pid: int, procs: dict, roots: dict[int, str]) -> str | None:
        """The party of `pid` (in one of our trees): "dealer" for a dealer, else its nearest registered ancestor's."""
        p, hops = pid, 0
        while p in procs and hops < 64:
            if p in roots:
                return "dealer" if procs[pid][1].startswith(DEALER_NAMES) else roots[p]
            p, hops = procs[p][0], hops + 1
        return None  # another user's process (e.g. another session's dealer on this machine)

    def sample(self) -> None:
        """One reading of every party's processes (PSS only for a party at a new RSS high)."""
        procs = _scan()
        with self._lock:
            roots = dict(self.roots)
        mine: dict[str, list[tuple[int, float]]] = {p: [] for p in PARTIES}
        for pid, (_, _, cpu, start) in procs.items():
            party = self._owner(pid, procs, roots)
            if party is None or (pid not in roots and start < self._t0):
                continue  # not ours, or older than this measurement (e.g. a fork server kept between sessions)
            cur, hwm = _status(pid)
            mine[party].append((pid, cur))
            with self._lock:
                if pid != self.me:
                    self._cpu[party][pid] = cpu
                    self._peak[party] = max(self._peak[party], hwm)  # exact lifetime peak of this process
                else:
                    self._cpu[party].setdefault(pid, 0.0)
        totals = {}
        for party, ps in mine.items():
            rss = sum(r for _, r in ps)
            if ps and (self._client_start is None or rss > self._rss_read[party] * PSS_STEP):
                self._rss_read[party] = rss
                totals[party] = sum(_pss(pid, r) for pid, r in ps)
        with self._lock:
            for party, total in totals.items():
                self._peak[party] = max(self._peak[party], total)
            if self._client_start is None:
                self._client_start = totals.get("client", 0.0)

    def result(self) -> dict[str, dict | None]:
        """{party: {"peak_rss_mb", "cpu_s"} or None} for client, server and dealer (None: no process seen)."""
        out: dict[str, dict | None] = {}
        for party in PARTIES:
            cpu = self._cpu[party]
            if not self.enabled or not cpu:
                out[party] = None
                continue
            total = sum(v for pid, v in cpu.items() if pid != self.me) + (self._self_cpu if party == "client" else 0)
            out[party] = {"peak_rss_mb": round(self._peak[party], 1), "cpu_s": round(total, 3)}
        if out["client"] is not None and self._client_start is not None:
            out["client"]["at_start_mb"] = round(self._client_start, 1)
        return out
