"""Pin the two 2PC parties of a measurement to different cores, so that their placement is the same every run.

Why: on one host (loopback, and the emulated links, whose namespaces share the host's CPUs) the scheduler
places the two CrypTen parties as it likes, and the placement changes from one session to the next. The
parties compute at the same time (2PC is symmetric) and wait on each other every round; where they share
a core, one party's polling threads take the core while the other one has work. Measured (session 7,
`benchmarks/loopback_variance.py --pin`, 16 interleaved sessions of minionn-mnist `ss` on loopback,
2 cores, under load 4-5): free placement, session medians 217-308 ms and 120-215 involuntary context
switches per query in the server's party; parties pinned apart, 139-207 ms and 48-84 switches. A fixed
kernel timed before and after every session did not follow the sessions (correlation -0.07): the spread is
the placement, not the machine's speed. So `privinfer bench --pin` and `privinfer profile --pin` pin rank
r's every thread to the r-th core they may use: the prediction and the measurement see the same placement
(the one two machines, or two dedicated cores, give), and the spread from placement under load is gone.

Why off by default (session 7, idle machine): pinning costs more than it saves when nothing else runs:
minionn-mnist `ss` measured 0.167-0.182 s pinned against 0.112-0.124 s free on loopback (likely because every
thread of a pinned party shares one core, while a free party spreads over both when the other waits; not
verified), and a user's `PrivateSession` is never pinned. Pinned, `-o threads=N` cannot spread either. So `privinfer bench` and the planner's calibration measure what a user gets (free placement) unless
`--pin` is given to both; `ENV` carries the choice to the calibration's counting parties.

Only the parties are pinned; the dealer, the sessions' orchestrating processes and everything else keep
every core. With fewer than two usable cores nothing is pinned. Linux only (`/proc`); elsewhere a no-op.
"""
from __future__ import annotations

import os
from pathlib import Path

#: set to "1" (by `privinfer bench --pin` / `privinfer profile --pin`) to pin; the party processes inherit it
ENV = "PRIVINFER_PIN_PARTIES"


def enabled() -> bool:
    """Whether this run pins its 2PC parties (off unless asked: see the module docstring)."""
    return os.environ.get(ENV) == "1"


#: process names (`protocols/ss/worker.child_setup`: "pi-ss-" + role, cut to 15 characters) -> party rank
PARTY_NAMES = {"pi-ss-party0": 0, "pi-ss-party1": 1, "pi-ss-count0": 0, "pi-ss-count1": 1}


def cores() -> list[int]:
    """The cores this process may run on, in order."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return []


def core_for(rank: int) -> int | None:
    """The core rank `rank` is pinned to (None: fewer than two cores, nothing is pinned)."""
    cs = cores()
    return cs[rank % len(cs)] if len(cs) >= 2 else None


def pin_self(rank: int) -> int | None:
    """Pin the calling process (every thread it has and will create) to its rank's core; the core or None."""
    c = core_for(rank)
    if c is None:
        return None
    _pin_tasks(os.getpid(), c)
    return c


def _pin_tasks(pid: int, core: int) -> None:
    tasks = [pid]
    try:
        tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        pass
    for tid in tasks:
        try:
            os.sched_setaffinity(tid, {core})
        except OSError:  # a thread that ended meanwhile
            pass


def descendants(pids) -> list[int]:
    """The given processes and every descendant (from /proc/*/stat's parent ids)."""
    kids: dict[int, list[int]] = {}
    try:
        entries = [d for d in os.listdir("/proc") if d.isdigit()]
    except OSError:
        return list(pids)
    for d in entries:
        try:
            ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    out, todo = [], list(pids)
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def pin_parties(roots) -> dict[str, int]:
    """Pin every 2PC party process below `roots` (pids) to its rank's core: {process name: core} (empty when
    there is none, or fewer than two cores)."""
    done: dict[str, int] = {}
    for pid in descendants(roots):
        try:
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        if name in PARTY_NAMES and (c := core_for(PARTY_NAMES[name])) is not None:
            _pin_tasks(pid, c)
            done[name] = c
    return done
