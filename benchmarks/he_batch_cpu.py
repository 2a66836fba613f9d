"""Where the CPU of an end-to-end batch query goes: client, client SEAL helper, server, server SEAL helper.

    .venv/bin/python benchmarks/he_batch_cpu.py [--batch 4096] [--queries 3] [--out PATH]

Why: the end-to-end target of issue 13 (cryptonets-mnist, batch 4096, >= 2000 images/s on 2 cores) is
bounded by CPU, not by the link: client and server share the machine's cores, so a query can never take
less than (CPU seconds of all four processes) / cores. This benchmark runs the real thing -- a
`PrivateSession` with the server in its own process over loopback TCP, streamed seeded uploads, both
sides' SEAL helper processes -- samples /proc/<pid>/stat of the whole process tree every 50 ms, and
reports per query: wall time, CPU seconds per process role, the CPU-bound ceiling
(batch / (total CPU / cores)) and the overlap efficiency ((total CPU / cores) / wall; 1.0 = no core ever
idle). The load average is recorded: other processes on a shared machine take cores away (the overlap
figure then reads low) and inflate CPU seconds (shared caches). Linux only (/proc).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> list[int]:
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _cpu(pid: int) -> float | None:
    """utime + stime of a process (all its threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TCK
    except (OSError, IndexError, ValueError):
        return None


class TreeSampler:
    """CPU seconds per process role, sampled every `period` s: roles are 'client' (this process),
    'server' (the session's server process), 'client_helper' / 'server_helper' (their other children)."""

    def __init__(self, server_pid: int, period: float = 0.05):
        self.server_pid, self.period = server_pid, period
        self.last: dict[int, tuple[str, float]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _roles(self) -> dict[int, str]:
        me = os.getpid()
        roles = {me: "client", self.server_pid: "server"}
        for c in _children(me):
            if c != self.server_pid:
                roles[c] = "client_helper"
        for c in _children(self.server_pid):
            roles[c] = "server_helper"
        return roles

    def _run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.period)

    def sample(self) -> None:
        got = {}
        for pid, role in self._roles().items():
            c = _cpu(pid)
            if c is not None:
                got[pid] = (role, c)
        with self.lock:
            self.last.update(got)  # a process that ended keeps its last reading

    def totals(self) -> dict[str, float]:
        self.sample()
        with self.lock:
            out: dict[str, float] = {}
            for role, c in self.last.values():
                out[role] = out.get(role, 0.0) + c
            return out

    def close(self):
        self.stop.set()
        self.thread.join()


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--queries", type=int, default=3, help="measured queries (after one warm-up)")
    ap.add_argument("--model", default="cryptonets-mnist")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "he_batch_cpu.json")
    args = ap.parse_args(argv)
    if not os.path.isdir("/proc/self/task"):
        raise SystemExit("this benchmark reads /proc (Linux only)")

    from privinfer.bench import load_model_and_data
    from privinfer.model.reference import run_reference
    from privinfer.session import PrivateSession

    load_before = os.getloadavg()
    graph, X, _, name = load_model_and_data(args.model)
    B, nq = args.batch, args.queries
    need = B * (nq + 1)
    X = np.concatenate([X] * (-(-need // len(X))))[:need]
    cores = os.cpu_count() or 1
    rows = []
    t_setup = time.perf_counter()
    with PrivateSession(graph, "he", packing="batch", batch_size=B) as sess:
        setup_s = time.perf_counter() - t_setup
        sampler = TreeSampler(sess._proc.pid)
        try:
            for i in range(nq + 1):
                xb = X[i * B:(i + 1) * B]
                c0, t0 = sampler.totals(), time.perf_counter()
                out = sess.infer(xb)
                wall, c1 = time.perf_counter() - t0, sampler.totals()
                q = sess.stats.last
                ref = run_reference(graph, xb)
                cpu = {r: round(c1.get(r, 0.0) - c0.get(r, 0.0), 3) for r in sorted(set(c0) | set(c1))}
                total = sum(cpu.values())
                row = {"query": i, "warmup": i == 0, "wall_s": round(wall, 3), "cpu_s": cpu,
                       "cpu_total_s": round(total, 3), "images_per_s": round(B / wall, 1),
                       "cpu_bound_images_per_s": round(B / (total / cores), 1) if total else None,
                       "overlap": round(total / cores / wall, 3),
                       "bytes_up": q.bytes_client_to_server, "bytes_down": q.bytes_server_to_client,
                       "argmax_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
                       "max_abs_err": float(np.max(np.abs(out - ref))), "loadavg_1min": os.getloadavg()[0]}
                rows.append(row)
                print(f"query {i}{' (warm-up)' if i == 0 else ''}: {wall:.2f} s = {B / wall:.0f} img/s, CPU {total:.2f} s "
                      f"{cpu}, ceiling {row['cpu_bound_images_per_s']} img/s, overlap {row['overlap']:.2f}, "
                      f"agreement {row['argmax_agreement']:.4f}, load {row['loadavg_1min']:.1f}", flush=True)
        finally:
            sampler.close()
    meas = [r for r in rows if not r["warmup"]] or rows
    med = statistics.median
    roles = sorted({k for r in meas for k in r["cpu_s"]})
    res = {
        "benchmark": f"he batch end to end, CPU per process ({name}, batch {B}, PrivateSession over loopback TCP)",
        "command": "python benchmarks/he_batch_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cores": cores, "setup_s": round(setup_s, 3),
        "wall_s_median": med([r["wall_s"] for r in meas]),
        "images_per_s_median": round(B / med([r["wall_s"] for r in meas]), 1),
        "cpu_s_median": {k: med([r["cpu_s"].get(k, 0.0) for r in meas]) for k in roles},
        "cpu_total_s_median": med([r["cpu_total_s"] for r in meas]),
        "cpu_bound_images_per_s_median": med([r["cpu_bound_images_per_s"] for r in meas]),
        "overlap_median": med([r["overlap"] for r in meas]),
        "queries": rows,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "queries"}, indent=2))
    return res


if __name__ == "__main__":
    main()
