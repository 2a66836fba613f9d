"""Interleaved A/B of a hybrid plan against `ss` on one network: one hybrid query, then one ss query, alternately.

Why next to `privinfer bench`: on a shared machine the load drifts during a run, and two benchmarks run one after
the other see different loads; alternating the two sessions query by query exposes both to the same load, so the
per-pair ratio is the figure to compare across commits. Both sessions are `PrivateSession`s (server in its own
process, loopback TCP), the image is the same for every query, the first pair warms up.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/hybrid_vs_ss.py --plan he:0,ss:1-2,he:3,ss:4-5,he:6-7,ss:8,he:9
"""
import argparse
import json
import os
import time

import numpy as np

from privinfer import PrivateSession
from privinfer.zoo import load_dataset, load_model

if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="minionn-mnist")
    p.add_argument("--plan", default="he:0,ss:1-2,he:3,ss:4-5,he:6-7,ss:8,he:9")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--json", default=None)
    a = p.parse_args()
    g = load_model(a.model)
    X, _ = load_dataset(a.model, "test")
    x = X[:1]
    hybrid = PrivateSession(g, "hybrid", plan=a.plan, warn=False)
    ss = PrivateSession(g, "ss", warn=False)
    th, ts, loads = [], [], []
    try:
        for i in range(a.pairs + 1):
            t0 = time.perf_counter()
            hybrid.infer(x)
            th_i = time.perf_counter() - t0
            t0 = time.perf_counter()
            ss.infer(x)
            ts_i = time.perf_counter() - t0
            if i:
                th.append(th_i)
                ts.append(ts_i)
                loads.append(os.getloadavg()[0])
    finally:
        hybrid.close()
        ss.close()
    th, ts = np.array(th), np.array(ts)
    rec = {"model": a.model, "plan": a.plan, "pairs": a.pairs, "hybrid_median_s": float(np.median(th)),
           "ss_median_s": float(np.median(ts)), "median_ratio": float(np.median(th / ts)),
           "load_1min": [round(v, 2) for v in (min(loads), max(loads))]}
    print(json.dumps(rec))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rec, f, indent=1)
