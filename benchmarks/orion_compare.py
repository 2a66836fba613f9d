"""`he` (latency, fast) against Orion on minionn-mnist-he, side by side in one run (issue 13's peer comparison).

    make orion   # once: Orion in .venv-orion
    python benchmarks/orion_compare.py --samples 3 --out benchmarks/results/orion_peer.json

Ours runs first (client and server processes over loopback TCP, `privinfer.bench.run_bench`), then Orion on
the same images (`orion_peer.py`, one process, no network); the ratio is Orion's median over ours.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--model", default="minionn-mnist-he")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "orion_peer.json"))
    a = ap.parse_args()
    from privinfer.bench import run_bench
    from privinfer.benchsuite.peers import orion
    from privinfer.benchsuite.report import machine
    t0 = time.perf_counter()
    ours = run_bench("he", a.model, samples=a.samples, options={"circuit_privacy": "fast"}, progress=False)
    ours["label"] = "he (latency, fast)"
    row = orion([ours], a.samples, model=a.model)
    out = {"command": "python benchmarks/orion_compare.py " + " ".join(sys.argv[1:]), "machine": machine(),
           "wall_s": round(time.perf_counter() - t0, 1), "ours": ours, "peer": row,
           "orion_over_ours": row["peer_latency_s"] / ours["latency_s"]["median"]}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"he (latency, fast) {ours['latency_s']['median']:.2f} s/image (set-up {ours['setup_s']:.1f} s, "
          f"{ours['setup_bytes'] / 2**20:.1f} MB keys, {ours['bytes_client_to_server'] / 2**10:.0f} KB up, agreement "
          f"{ours['argmax_agreement']:.3f}); Orion {row['peer_latency_s']:.2f} s/image (compile "
          f"{row['peer_detail']['compile_s']:.0f} s, agreement {row['peer_detail']['argmax_agreement']:.3f}): "
          f"Orion / ours = {out['orion_over_ours']:.2f}x")


if __name__ == "__main__":
    main()
