"""Phase-by-phase profile of one hybrid query: wall time of every step and sub-phase on the client and the server.

Why a script and not a flag in the library: the timers wrap the library's functions from outside (the server
runs in a spawned process, which re-imports this module, so the same wrappers are installed there), and the
library stays free of tracing code. Each wrapped call appends (pid, side, name, t_start, t_end) to a trace file;
`perf_counter` is CLOCK_MONOTONIC on Linux, shared by both processes, so the two sides share one time axis.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/hybrid_profile.py --queries 5

Prints, per phase, the median over the queries of its summed wall time and its start/end relative to the
client's query start (median), so overlaps show.
"""
import argparse
import functools
import json
import os
import time
from collections import defaultdict

TRACE = os.environ.get("HYBRID_PROFILE_TRACE", "/tmp/hybrid_profile.trace")


def _wrap(owner, attr: str, name: str) -> None:
    fn = getattr(owner, attr)
    if getattr(fn, "_profiled", False):
        return

    @functools.wraps(fn)
    def inner(*a, **k):
        t0 = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            t1 = time.perf_counter()
            with open(TRACE, "a") as f:
                f.write(json.dumps([os.getpid(), name, t0, t1]) + "\n")
    inner._profiled = True
    setattr(owner, attr, inner)


def install() -> None:
    from privinfer.protocols import hybrid
    from privinfer.protocols.convert import bfv as conv
    from privinfer.protocols.he import bfv
    from privinfer.protocols.hybrid import bfv_seg, steps
    from privinfer.protocols.ss import sides
    from privinfer.protocols.ss import steps as ss_steps
    from privinfer.protocols.ss.dealer import LocalDealer
    from privinfer.protocols.ss.worker import ChildProcess
    from privinfer.protocols.he import bfv_eval
    _wrap(hybrid._HybridServer, "prepare", "S offline (prepare)")
    _wrap(hybrid._HybridClient, "prepare", "C offline (prepare)")
    _wrap(hybrid._HybridClient, "query", "C query")
    _wrap(hybrid._HybridServer, "query", "S query")
    for cls in ("_HybridServer", "_HybridClient"):
        c = getattr(hybrid, cls)
        for a in ("offline_start", "offline_collect"):
            if hasattr(c, a):
                _wrap(c, a, ("S " if "Server" in cls else "C ") + a)
    _wrap(steps.BFVSegmentStep, "run", "* BFV step")
    _wrap(ss_steps.SSSegment, "run", "* SS step")
    _wrap(bfv_seg.BFVSegmentServer, "run", "S bfv image")
    _wrap(bfv_seg.BFVSegmentClient, "upload", "C bfv upload (encode+encrypt)")
    _wrap(bfv_seg.BFVSegmentClient, "share", "C bfv share (decrypt)")
    _wrap(bfv_seg.BFVSegmentClient, "result", "C bfv result (decrypt)")
    _wrap(conv, "unmask_input", "S unmask input")
    _wrap(bfv_eval.BFVSegment, "evaluate", "S evaluate")
    _wrap(conv, "mask_to_shares", "S mask->shares (+finish)")
    _wrap(conv, "reveal_final", "S reveal final (+finish)")
    _wrap(bfv.BFVContext, "finish", "S finish (rerand+flood)")
    _wrap(bfv.BFVContext, "encrypt", "C encrypt")
    _wrap(bfv.BFVContext, "decrypt", "C decrypt")
    _wrap(bfv.BFVContext, "ct_from_bytes", "* ct_from_bytes")
    _wrap(LocalDealer, "start", "S dealer start")
    _wrap(LocalDealer, "finish", "S dealer finish (wait)")
    _wrap(sides._SSServer, "_plan", "S plan lookup")
    _wrap(ChildProcess, "call", "* worker call")
    _wrap(ChildProcess, "recv", "* worker recv")
    from privinfer.transport import Channel
    _wrap(Channel, "recv_blobs", "* recv_blobs")
    _wrap(Channel, "send_blobs", "* send_blobs")
    _wrap(Channel, "recv_json", "* recv_json")


install()


SEPARATE = ("step", "evaluate", "upload", "mask->shares", "unmask", "reveal final", "bfv image")


def report(path: str, client_pid: int) -> None:
    rows = [json.loads(line) for line in open(path)]
    queries = sorted((r for r in rows if r[1] == "C query"), key=lambda r: r[2])
    per = defaultdict(list)  # name -> [(sum, first start rel, last end rel, count)] per query
    for q in queries[1:]:  # the first query warms up
        q0, q1 = q[2], q[3]
        acc = defaultdict(lambda: [0.0, None, None, 0])
        seen = defaultdict(int)
        for pid, name, t0, t1 in sorted(rows, key=lambda r: r[2]):
            if t0 < q0 - 1e-3 or t1 > q1 + 0.05 or name == "C query":
                continue
            side = "C" if pid == client_pid else "S"
            key = name if name[0] != "*" else side + name[1:]
            if any(w in key for w in SEPARATE):  # one row per occurrence: the timeline of the query
                seen[key] += 1
                key = f"{key} #{seen[key]}"
            a = acc[key]
            a[0] += t1 - t0
            a[1] = t0 - q0 if a[1] is None else min(a[1], t0 - q0)
            a[2] = t1 - q0 if a[2] is None else max(a[2], t1 - q0)
            a[3] += 1
        acc["C query"] = [q1 - q0, 0.0, q1 - q0, 1]
        for k, v in acc.items():
            per[k].append(v)
    import numpy as np
    print(f"{'phase':42s} {'sum ms':>8s} {'from ms':>8s} {'to ms':>8s} {'calls':>6s}")
    for k, v in sorted(per.items(), key=lambda kv: np.median([x[1] for x in kv[1]])):
        a = np.array(v, dtype=float)
        med = np.median(a, axis=0)
        print(f"{k:42s} {med[0]*1e3:8.1f} {med[1]*1e3:8.1f} {med[2]*1e3:8.1f} {med[3]:6.0f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="minionn-mnist")
    p.add_argument("--plan", default="he:0,ss:1-2,he:3,ss:4-5,he:6-7,ss:8,he:9")
    p.add_argument("--queries", type=int, default=5)
    p.add_argument("--port", type=int, default=7593)
    p.add_argument("--serve", action="store_true", help="(internal) the server process")
    a = p.parse_args()
    import privinfer
    from privinfer.zoo import load_dataset, load_model
    g = load_model(a.model)
    if a.serve:  # the server in a process of its own, with the same timers
        privinfer.Server(g, "hybrid", "127.0.0.1", a.port, plan=a.plan, dealer="local").serve_forever()
        raise SystemExit(0)
    import subprocess
    import sys
    if os.path.exists(TRACE):
        os.remove(TRACE)
    srv = subprocess.Popen([sys.executable, __file__, "--serve", "--port", str(a.port), "--model", a.model,
                            "--plan", a.plan])
    try:
        X, _ = load_dataset(a.model, "test")
        for _ in range(600):
            try:
                s = privinfer.connect("127.0.0.1", a.port, "hybrid", warn=False)
                break
            except Exception:
                time.sleep(0.2)
        try:
            for i in range(a.queries + 1):
                s.infer(X[i:i + 1])
        finally:
            s.close()
    finally:
        srv.terminate()
        srv.wait()
    print(f"load {os.getloadavg()[0]:.2f}")
    report(TRACE, os.getpid())
