"""HE latency packing on the zoo's polynomial networks, with TenSEAL's tutorial recipe in the same run.

    python benchmarks/he_latency.py [--runs 7] [--models tenseal-mnist cryptonets-mnist] [--out he.jsonl]

For each model: a `PrivateSession(graph, "he")` (server in its own process, loopback TCP, calibrated on 256
training images) answers `--runs` test images one query each, after one warm-up query. For tenseal-mnist the
tutorial baseline (benchmarks/tenseal_tutorial_baseline.py, in-process, no serialization) runs on the same
images, interleaved query by query with ours so that both see the same machine load. Prints one JSON record
per model (ARCHITECTURE.md's benchmark fields) plus the baseline figures and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import privinfer  # noqa: E402
from privinfer import zoo  # noqa: E402
from privinfer.model import run_reference  # noqa: E402


def _q(v):
    return {"median": float(np.median(v)), "p25": float(np.percentile(v, 25)), "p75": float(np.percentile(v, 75))}


def bench(name: str, runs: int, baseline: bool) -> dict:
    graph = zoo.load_model(name)
    Xtr, _ = zoo.load_dataset(name, "train")
    X, y = zoo.load_dataset(name, "test")
    X, y = X[:runs + 1], y[:runs + 1]
    ref = run_reference(graph, X)
    base = None
    if baseline:
        from tenseal_tutorial_baseline import Baseline
        base = Baseline(graph)
    lat, logits, base_lat, base_logits = [], [], [], []
    t0 = time.perf_counter()
    with privinfer.PrivateSession(graph, "he", calibration=Xtr[:256]) as s:
        for i, img in enumerate(X):
            out = s.infer(img)
            if base is not None:
                bt, by = base.one(img)
            if i == 0:
                continue  # warm-up
            lat.append(s.stats.last.latency_s)
            logits.append(out)
            if base is not None:
                base_lat.append(bt)
                base_logits.append(by)
        stats = s.stats
        qs = stats.queries[1:]
    logits = np.stack(logits)
    r = ref[1:]
    rec = {"protocol": "he", "model": name, "batch": 1, "network": "loopback", "samples": len(lat),
           "latency_s": _q(lat), "offline_s": 0.0, "online_s": float(np.median(lat)),
           "bytes_client_to_server": int(np.median([q.bytes_client_to_server for q in qs])),
           "bytes_server_to_client": int(np.median([q.bytes_server_to_client for q in qs])),
           "setup_bytes": stats.setup_bytes, "setup_s": stats.setup_s, "rounds": qs[-1].rounds,
           "accuracy_plain": float((r.argmax(1) == y[1:]).mean()),
           "accuracy_private": float((logits.argmax(1) == y[1:]).mean()),
           "argmax_agreement": float((logits.argmax(1) == r.argmax(1)).mean()),
           "max_abs_err": float(np.abs(logits - r).max()),
           "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "privacy": stats.privacy, "wall_s": time.perf_counter() - t0,
           "loadavg_1m": os.getloadavg()[0]}
    if base is not None:
        bl = np.stack(base_logits)
        rec["baseline_tenseal_tutorial"] = {
            "latency_s": _q(base_lat), "setup_bytes": base.setup_bytes,
            "max_abs_err": float(np.abs(bl - r).max()),
            "argmax_agreement": float((bl.argmax(1) == r.argmax(1)).mean())}
        rec["ratio_to_baseline"] = float(np.median(lat) / np.median(base_lat))
    return rec


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--models", nargs="+", default=["tenseal-mnist", "cryptonets-mnist"])
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--out")
    a = p.parse_args(argv)
    recs = []
    for m in a.models:
        rec = bench(m, max(5, a.runs), baseline=(m == "tenseal-mnist" and not a.no_baseline))
        recs.append(rec)
        line = {k: v for k, v in rec.items() if k != "privacy"}
        print(json.dumps(line))
        msg = f"{m}: median {rec['latency_s']['median'] * 1e3:.0f} ms/image, setup {rec['setup_bytes'] / 1e6:.1f} MB"
        if "ratio_to_baseline" in rec:
            b = rec["baseline_tenseal_tutorial"]["latency_s"]["median"]
            msg += f"; TenSEAL tutorial {b * 1e3:.0f} ms -> ratio {rec['ratio_to_baseline']:.3f}"
        print(msg, file=sys.stderr)
    if a.out:
        with open(a.out, "a") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
