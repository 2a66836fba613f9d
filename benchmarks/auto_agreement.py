"""Every `protocol="auto"` plan against the plaintext reference executor on the whole digits test split
(issue 11: logits within 1e-2, argmax agreement >= 99.9 %).

    python benchmarks/auto_agreement.py --network wan --models cryptonets-mnist mixed-mnist minionn-mnist
    python benchmarks/auto_agreement.py --network mobile --models wide-mlp-mnist

The plan is the one the planner chooses for --network (what runs is the same on any link, so the session
itself runs on loopback); queries go in batches of --batch images. Writes one JSON line per model.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--network", default="wan")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from privinfer import PrivateSession, zoo
    from privinfer.model.reference import run_reference
    rows = []
    for name in a.models:
        g = zoo.load_model(name)
        X, y = zoo.load_dataset(name, "test")
        X = X[:a.limit] if a.limit else X
        ref = run_reference(g, X)
        t0 = time.perf_counter()
        with PrivateSession(g, "auto", network=a.network, dealer="local", warn=False) as s:
            out = np.concatenate([s.infer(X[i:i + a.batch]) for i in range(0, len(X), a.batch)])
            plan = s.stats.privacy.get("plan") or s.stats.protocol
        row = {"model": name, "network_planned_for": a.network, "plan": plan, "images": int(len(X)),
               "argmax_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
               "max_abs_err": float(np.max(np.abs(out - ref))), "accuracy_private": float(np.mean(out.argmax(1) == y[:len(X)])),
               "wall_s": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if a.out:
        Path(a.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
