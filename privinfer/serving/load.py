"""Load generation for `benchmarks/load.py`: K client processes against a real `privinfer serve`.

Why its own module (not a benchmark script only): the client loops run in spawned processes (K end
devices; client-side encryption must not share one GIL), so their body has to be importable, and the
test suite runs a short version of the same code. Everything is bounded: a fixed duration, a query cap
per client, loopback only, and every process started here is ended here.

Per phase it reports throughput (queries/s), p50/p95/p99 latency, errors (by type), wrong answers
(logits checked against the plaintext reference executor within the protocol's tolerance; for `noisy`,
whose outputs are randomized on purpose, only shape and finiteness), and for the server's whole process
tree (supervisor, workers, per-session children): CPU seconds per second of wall time and peak RSS,
also per third of the phase so that growth shows.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np

# |logit - reference| <= atol + rtol * max|reference logits|. ss computes in 16-bit fixed point, so its error
# scales with the logits (secureml-mnist's reach ~240: 1e-2 observed at logits ~100, i.e. 1e-4 relative)
TOLERANCE = {"plain": (1e-4, 0.0), "he": (1e-2, 0.0), "ss": (1e-2, 2e-4), "noisy": None}
MODELS = {"plain": "minionn-mnist", "he": "cryptonets-mnist", "ss": "secureml-mnist", "noisy": "minionn-mnist"}
SERVE_OPTIONS = {"noisy": ["-o", "split=3", "-o", "clip=40"], "ss": ["--dealer", "local"],
                 "he": ["-o", "circuit_privacy=fast"]}  # he: answers are checked to 1e-2, below the flood mode's noise
CLIENT_OPTIONS = {"noisy": {"epsilon": 1.0}}


# ---------------------------------------------------------------------------------------------
# /proc accounting of a process tree (Linux)
# ---------------------------------------------------------------------------------------------
def _stat(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = _stat(int(d))
            if st:
                kids.setdefault(int(st[1]), []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def cpu_seconds(pid: int) -> float:
    """CPU time of the tree, including children it has already reaped."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for p in tree(pid):
        st = _stat(p)
        if st:
            total += sum(int(x) for x in st[11:15])
    return total / tick


def rss_bytes(pid: int) -> int:
    total = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


class RssSampler:
    """Samples the tree's RSS every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.25):
        self.pid, self.interval, self.samples = pid, interval, []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            self.samples.append((time.monotonic(), rss_bytes(self.pid)))
            self._stop.wait(self.interval)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def peaks_by_third(self) -> list[float]:
        if not self.samples:
            return []
        t0, t1 = self.samples[0][0], self.samples[-1][0] + 1e-9
        thirds = [[r for t, r in self.samples if t0 + k * (t1 - t0) / 3 <= t < t0 + (k + 1) * (t1 - t0) / 3]
                  for k in range(3)]
        return [round(max(th) / 2 ** 20, 1) if th else None for th in thirds]


# ---------------------------------------------------------------------------------------------
# the server under test
# ---------------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """`privinfer serve` in a child process, as a user runs it; ended with SIGTERM (then SIGKILL)."""

    def __init__(self, protocol: str, model: str, workers: int, max_sessions: int, extra: list[str] | None = None,
                 start_timeout: float = 300.0):
        self.port = free_port()
        cmd = [sys.executable, "-m", "privinfer", "serve", "--protocol", protocol, "--model", model,
               "--port", str(self.port), "--workers", str(workers), "--max-sessions", str(max_sessions),
               *SERVE_OPTIONS.get(protocol, []), *(extra or [])]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        line = _readline(self.proc, start_timeout)
        if "serving" not in line:
            self.stop()
            raise RuntimeError(f"server did not start: {' '.join(cmd)} -> {line!r}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc.stdout.close()
        return self.proc.returncode


def _readline(proc, timeout: float) -> str:
    out: list[str] = []
    t = threading.Thread(target=lambda: out.append(proc.stdout.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return out[0] if out else ""


# ---------------------------------------------------------------------------------------------
# one client process
# ---------------------------------------------------------------------------------------------
def _client(port: int, protocol: str, model: str, options: dict, ready, go, duration: float, max_queries: int,
            seed: int, results) -> None:
    """Connect, report ready, wait for `go`, query until the duration or the cap; send the records."""
    import privinfer
    from privinfer import zoo
    from privinfer.model.reference import run_reference
    recs, err_setup = [], None
    try:
        X, _ = zoo.load_dataset(model, "test")
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(X), size=min(32, len(X)), replace=False)
        xs = X[idx]
        ref = run_reference(privinfer.compile_model(zoo.load_model(model)), xs)
        s = privinfer.connect("127.0.0.1", port, protocol, timeout=120, **options)
    except Exception as e:  # a refused session counts as an error of this client
        s, err_setup = None, f"setup:{type(e).__name__}"
    ready.put(os.getpid())
    go.wait(600)
    t_end = time.monotonic() + duration
    cpu0 = time.process_time()
    if s is not None:
        tol = TOLERANCE[protocol]
        k = 0
        while time.monotonic() < t_end and k < max_queries:
            i = k % len(xs)
            t0 = time.monotonic()
            try:
                y = s.infer(xs[i])
                lat = time.monotonic() - t0
                ok = y.shape == ref[i].shape and bool(np.all(np.isfinite(y)))
                err = float(np.abs(y - ref[i]).max()) if ok else float("inf")
                if ok and tol is not None:
                    ok = err <= tol[0] + tol[1] * float(np.abs(ref[i]).max())
                agree = int(np.argmax(y)) == int(np.argmax(ref[i]))
                recs.append((t0, lat, "ok" if ok else "wrong", agree, err))
            except Exception as e:
                recs.append((t0, time.monotonic() - t0, f"error:{type(e).__name__}", False, None))
                break  # a failed session is closed: this client is done
            k += 1
        try:
            s.close()
        except Exception:
            pass
    results.put({"pid": os.getpid(), "records": recs, "setup_error": err_setup, "cpu_s": time.process_time() - cpu0})


def _percentile(v: list[float], q: float) -> float | None:
    return round(float(np.percentile(v, q)) * 1e3, 1) if v else None


def run_phase(server: ServerProcess, protocol: str, model: str, clients: int, duration: float,
              max_queries: int = 100000, options: dict | None = None) -> dict:
    """K client processes query for `duration` seconds; returns the phase's figures."""
    ctx = mp.get_context("spawn")
    ready, results, go = ctx.Queue(), ctx.Queue(), ctx.Event()
    opts = {**CLIENT_OPTIONS.get(protocol, {}), **(options or {})}
    procs = [ctx.Process(target=_client, args=(server.port, protocol, model, opts, ready, go, duration, max_queries,
                                                1000 + i, results), daemon=True) for i in range(clients)]
    for p in procs:
        p.start()
    try:
        for _ in procs:
            ready.get(timeout=600)
        cpu0, t0, load0 = cpu_seconds(server.proc.pid), time.monotonic(), load_average()
        with RssSampler(server.proc.pid) as rss:
            go.set()
            outs = [results.get(timeout=duration + 600) for _ in procs]
        wall = time.monotonic() - t0
        cpu = cpu_seconds(server.proc.pid) - cpu0
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
                p.join(5)
    recs = [r for o in outs for r in o["records"]]
    lat = [r[1] for r in recs if r[2] == "ok" or r[2] == "wrong"]
    errors: dict[str, int] = {}
    for o in outs:
        if o["setup_error"]:
            errors[o["setup_error"]] = errors.get(o["setup_error"], 0) + 1
    for r in recs:
        if r[2].startswith("error"):
            errors[r[2][6:]] = errors.get(r[2][6:], 0) + 1
    done = [r for r in recs if not r[2].startswith("error")]
    # throughput over the window in which all clients were querying
    span = max((r[0] + r[1] for r in recs), default=t0) - min((r[0] for r in recs), default=t0)
    peaks = rss.peaks_by_third()
    return {"protocol": protocol, "model": model, "clients": clients, "duration_s": round(wall, 2),
            "queries": len(done), "throughput_qps": round(len(done) / span, 3) if span > 0 else 0.0,
            "latency_ms": {"p50": _percentile(lat, 50), "p95": _percentile(lat, 95), "p99": _percentile(lat, 99)},
            "errors": errors, "wrong_answers": sum(r[2] == "wrong" for r in recs),
            "wrong_answer_errors": sorted(r[4] for r in recs if r[2] == "wrong")[-10:],
            "max_abs_err_ok": max((r[4] for r in recs if r[2] == "ok"), default=None),
            "argmax_agreement": round(sum(r[3] for r in done) / len(done), 4) if done else None,
            "server_cpu_cores": round(cpu / wall, 2) if wall > 0 else None,
            "server_cpu_ms_per_query": round(cpu / len(done) * 1e3, 1) if done else None,
            "client_cpu_ms_per_query": round(sum(o["cpu_s"] for o in outs) / len(done) * 1e3, 1) if done else None,
            "load_average_before_after": [load0, load_average()],
            "server_peak_rss_mb": max((p for p in peaks if p is not None), default=None),
            "server_peak_rss_mb_by_third": peaks}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
