"""Benchmark `cheetah` (privinfer, 2PC without a dealer) against SPU's CHEETAH run directly, in one run.

    .venv/bin/python benchmarks/cheetah_bench.py --model minionn-mnist deepsecure-mnist --samples 5

For each model: (1) `privinfer.bench.run_bench("cheetah", ...)`, exactly what `privinfer bench --protocol
cheetah` measures (server in its own process, client in this one, both with their SPU party process, batch 1,
loopback); (2) `benchmarks/cheetah_direct.py` under the SPU venv: the same lowered network, SPU's own runtime,
two processes on loopback, no privinfer. Prints both and the latency ratio privinfer / direct (goal <= 1.10);
with --json, writes both records.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privinfer.bench import load_model_and_data, run_bench  # noqa: E402
from privinfer.protocols.cheetah.spawn import spu_python  # noqa: E402

HERE = Path(__file__).resolve().parent


def direct(graph, X: np.ndarray, samples: int, fxp_bits: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.npz"
        arrays = {**graph.arrays(), "__x__": X[:samples + 1]}
        spec = np.frombuffer(json.dumps(graph.spec()).encode(), dtype=np.uint8)
        np.savez(path, __spec__=spec, **arrays)
        out = subprocess.run([spu_python(), str(HERE / "cheetah_direct.py"), str(path), "--samples", str(samples),
                              "--fxp-bits", str(fxp_bits)],
                             capture_output=True, text=True, timeout=1800, env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
        if out.returncode != 0:
            raise SystemExit(f"direct SPU run failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", default=["minionn-mnist", "deepsecure-mnist"])
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--json", help="write the records here")
    a = ap.parse_args()
    records = []
    for name in a.model:
        graph, X, _, _ = load_model_and_data(name)
        ours = run_bench("cheetah", name, batch=1, samples=a.samples, warmup=1)
        base = direct(graph, X, a.samples, ours["privacy"]["fixed_point_bits"])  # the direct run's first run is its set-up; it then queries X[1..]
        ratio = ours["latency_s"]["median"] / base["latency_s"]["median"]
        rec = {"model": name, "privinfer": ours, "spu_direct": base, "latency_ratio": round(ratio, 3)}
        records.append(rec)
        print(f"{name}: privinfer cheetah {ours['latency_s']['median']:.3f} s "
              f"(up {ours['bytes_client_to_server'] / 1e6:.2f} MB, down {ours['bytes_server_to_client'] / 1e6:.2f} MB, "
              f"set-up {ours['setup_s']:.1f} s / {ours['setup_bytes'] / 1e6:.1f} MB, agreement {ours['argmax_agreement']}, "
              f"max err {ours['max_abs_err']:.2e}) | SPU direct {base['latency_s']['median']:.3f} s "
              f"(up {base['bytes_client_to_server'] / 1e6:.2f} MB, down {base['bytes_server_to_client'] / 1e6:.2f} MB, "
              f"set-up run {base['setup_run_s']:.1f} s / {base['setup_bytes'] / 1e6:.1f} MB) | ratio {ratio:.3f}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
