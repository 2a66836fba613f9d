"""Why does minionn-mnist `ss` on loopback move by +-20 % between runs? Many short sessions, each with a fixed
CPU-bound reference kernel timed right before and after it, and per-query timelines with where every party
process ran.

    python benchmarks/loopback_variance.py --sessions 12 --queries 10 --out variance.json [--pin]

Per session: the reference probe (`probe_s`: single-thread torch matmuls plus numpy FFTs, ~0.1 s, the kind of
kernel CrypTen's parties run), a PrivateSession (server in its own process, CrypTen workers and a local
dealer), one warm-up query and `--queries` timed ones; for every query: latency, offline and online seconds,
and for every process of the session the CPU it last ran on (/proc/PID/task/*/stat field 39) and its
voluntary / involuntary context switches during the query; Python GC collections in the client during the
query. Then the probe again. `--pin`: every other session (interleaved A/B) pins the two CrypTen parties'
threads to different cores (`privinfer.affinity.pin_parties`, as `privinfer bench --pin` does) once the session is
open; the others leave placement to the scheduler (`privinfer bench`, the default). `--same-core`: every other
session pins both parties to the FIRST core instead (forced co-location: the mode free placement falls into?).

What it separates: if session medians move with the probe, the machine's speed moves (host noise); if they
move while the probe stays put, it is the session (placement of its processes, first-query effects, GC).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from privinfer.affinity import descendants, pin_parties


def probe(reps: int = 5) -> float:
    """Median seconds of a fixed single-thread kernel mix (float64 matmul + FFT + elementwise int64)."""
    import torch
    torch.set_num_threads(1)
    a = torch.randn(192, 192, dtype=torch.float64)
    x = np.random.default_rng(0).integers(0, 1 << 40, size=1 << 16, dtype=np.int64)
    f = np.random.default_rng(1).standard_normal(1 << 14)
    out = []
    for _ in range(reps + 1):
        t0 = time.perf_counter()
        for _ in range(6):
            a @ a
        for _ in range(10):
            np.fft.rfft(f)
        for _ in range(10):
            (x * 3 + 7) & ((1 << 40) - 1)
        out.append(time.perf_counter() - t0)
    return statistics.median(out[1:])


def _proc_state(pid: int) -> dict | None:
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
        st = Path(f"/proc/{pid}/status").read_text()
        vol = int(next(l for l in st.splitlines() if l.startswith("voluntary_ctxt")).split()[1])
        inv = int(next(l for l in st.splitlines() if l.startswith("nonvoluntary_ctxt")).split()[1])
        cpus, utime = [], 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            f = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            cpus.append(int(f[36]))
            utime += int(f[11]) + int(f[12])
        return {"name": name, "vol": vol, "inv": inv, "threads": len(cpus), "cpus": sorted(set(cpus)),
                "ticks": utime}
    except (OSError, StopIteration, IndexError, ValueError):
        return None


def snapshot(pids: list[int]) -> dict:
    return {p: s for p in pids if (s := _proc_state(p)) is not None}


def diff(a: dict, b: dict) -> dict:
    out = {}
    for p, sb in b.items():
        sa = a.get(p)
        if sa is None:
            continue
        out[str(p)] = {"name": sb["name"], "vol": sb["vol"] - sa["vol"], "inv": sb["inv"] - sa["inv"],
                       "ticks": sb["ticks"] - sa["ticks"], "threads": sb["threads"], "cpus": sb["cpus"]}
    return out


def _same_core(roots) -> dict:
    from privinfer import affinity
    done = {}
    for pid in affinity.descendants(roots):
        st = _proc_state(pid)
        if st and st["name"] in affinity.PARTY_NAMES:
            affinity._pin_tasks(pid, affinity.cores()[0])
            done[st["name"]] = affinity.cores()[0]
    return done


def one_session(graph, X, queries: int, pin: bool = False, same: bool = False) -> dict:
    from privinfer.session import PrivateSession
    p0 = probe()
    rec = {"probe_before_s": p0, "load_before": os.getloadavg()[0], "queries": []}
    t_open = time.perf_counter()
    with PrivateSession(graph, "ss") as sess:
        rec["setup_s"] = time.perf_counter() - t_open
        pids = descendants([os.getpid()])
        rec["pinned"] = (_same_core([os.getpid()]) if same else pin_parties([os.getpid()])) if pin else {}
        rec["same_core"] = bool(same and pin)
        for i in range(queries + 1):
            before = snapshot(pids)
            g0 = [s["collections"] for s in gc.get_stats()]
            sess.infer(X[i:i + 1])
            q = sess.stats.last
            g1 = [s["collections"] for s in gc.get_stats()]
            rec["queries"].append({"i": i, "latency_s": q.latency_s, "offline_s": q.offline_s, "online_s": q.online_s,
                                   "gc": [b - a for a, b in zip(g0, g1)], "procs": diff(before, snapshot(pids))})
    rec["probe_after_s"] = probe()
    rec["load_after"] = os.getloadavg()[0]
    lat = [q["latency_s"] for q in rec["queries"][1:]]
    rec["median_s"] = statistics.median(lat)
    rec["first_query_s"] = rec["queries"][0]["latency_s"]
    return rec


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="minionn-mnist")
    ap.add_argument("--sessions", type=int, default=12)
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--out", required=True)
    ap.add_argument("--pin", action="store_true", help="odd sessions pin the two parties to different cores")
    ap.add_argument("--same-core", action="store_true", help="odd sessions pin both parties to the first core")
    a = ap.parse_args(argv)
    from privinfer.bench import load_model_and_data
    graph, X, _, _ = load_model_and_data(a.model)
    res = []
    for k in range(a.sessions):
        r = one_session(graph, X, a.queries, pin=(a.pin or a.same_core) and k % 2 == 1, same=a.same_core)
        res.append(r)
        print(f"session {k}: probe {r['probe_before_s'] * 1e3:.1f}/{r['probe_after_s'] * 1e3:.1f} ms, median "
              f"{r['median_s'] * 1e3:.1f} ms (min {min(q['latency_s'] for q in r['queries'][1:]) * 1e3:.1f}, max "
              f"{max(q['latency_s'] for q in r['queries'][1:]) * 1e3:.1f}), first {r['first_query_s'] * 1e3:.1f} ms, "
              f"load {r['load_before']:.2f}{(' SAME CORE' if r['same_core'] else ' PINNED') if r['pinned'] else ''}", flush=True)
        Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    med = [r["median_s"] for r in res]
    pr = [(r["probe_before_s"] + r["probe_after_s"]) / 2 for r in res]
    print(f"session medians: min {min(med) * 1e3:.1f} median {statistics.median(med) * 1e3:.1f} max "
          f"{max(med) * 1e3:.1f} ms; probe min {min(pr) * 1e3:.2f} max {max(pr) * 1e3:.2f} ms; "
          f"corr(probe, median) {np.corrcoef(pr, med)[0, 1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
