"""Benchmark `cheetah` (privinfer, 2PC without a dealer) against SPU's CHEETAH run directly, in one run.

    .venv/bin/python benchmarks/cheetah_bench.py --model minionn-mnist deepsecure-mnist --samples 10

For each model, both systems are set up first, then their queries ALTERNATE (ours, direct, ours, ...) so
that both see the same machine load:
  * privinfer: `PrivateSession(graph, "cheetah")`, what `privinfer bench --protocol cheetah` opens on
    loopback (server in its own process, client here, one SPU party process next to each), batch 1;
  * direct: `benchmarks/cheetah_direct.py` under the SPU venv: the same lowered network, SPU's own runtime,
    two processes on loopback, no privinfer.
Prints medians and the latency ratio privinfer / direct (goal <= 1.10); with --json, writes the records.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privinfer.bench import load_model_and_data  # noqa: E402
from privinfer.model.reference import run_reference  # noqa: E402
from privinfer.protocols.cheetah.spawn import spu_python  # noqa: E402
from privinfer.session import PrivateSession  # noqa: E402

HERE = Path(__file__).resolve().parent


def _q(v: list[float]) -> dict:
    p = np.percentile(v, [25, 50, 75])
    return {"median": float(p[1]), "p25": float(p[0]), "p75": float(p[2])}


def measure(name: str, samples: int) -> dict:
    graph, X, _, _ = load_model_and_data(name)
    X = X[:samples + 1].astype(np.float64)
    ref = run_reference(graph, X)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.npz"
        spec = np.frombuffer(json.dumps(graph.spec()).encode(), dtype=np.uint8)
        np.savez(path, __spec__=spec, __x__=X, **graph.arrays())
        t0 = time.perf_counter()
        sess = PrivateSession(graph, "cheetah")
        ours_setup = (time.perf_counter() - t0, sess.stats.setup_bytes)
        fxp = sess.stats.privacy["fixed_point_bits"]
        direct = subprocess.Popen([spu_python(), str(HERE / "cheetah_direct.py"), str(path), "--fxp-bits", str(fxp)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                  env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
        try:
            d_setup = json.loads(direct.stdout.readline())["setup"]
            ours, base = [], []
            for i in range(1, samples + 1):  # both ran image 0 already (warm-up / set-up)
                out = sess.infer(X[i])
                q = sess.stats.last
                ours.append((q.latency_s, q.bytes_client_to_server, q.bytes_server_to_client, q.rounds, out))
                direct.stdin.write("q\n")
                direct.stdin.flush()
                base.append(json.loads(direct.stdout.readline()))
                print(f"\r  {name} query {i}/{samples}: privinfer {ours[-1][0]:.3f} s, direct {base[-1]['latency_s']:.3f} s",
                      end="", flush=True)
            print()
            direct.stdin.write("exit\n")
            direct.stdin.flush()
            direct.wait(60)
        finally:
            sess.close()
            if direct.poll() is None:
                direct.kill()
    ol = np.array([o[4] for o in ours])
    dl = np.array([b["logits"] for b in base])
    r = ref[1:samples + 1]
    rec_ours = {"latency_s": _q([o[0] for o in ours]), "setup_s": ours_setup[0], "setup_bytes": ours_setup[1],
                "bytes_client_to_server": int(statistics.median(o[1] for o in ours)),
                "bytes_server_to_client": int(statistics.median(o[2] for o in ours)),
                "rounds_upper_bound": int(statistics.median(o[3] for o in ours)),
                "max_abs_err": float(np.abs(ol - r).max()), "argmax_agreement": float((ol.argmax(1) == r.argmax(1)).mean())}
    rec_base = {"latency_s": _q([b["latency_s"] for b in base]), "setup_run_s": d_setup["setup_s"],
                "setup_wall_s": d_setup["wall_s"], "setup_bytes": d_setup["bytes_sent"] + d_setup["bytes_received"],
                "bytes_client_to_server": int(statistics.median(b["bytes_sent"] for b in base)),
                "bytes_server_to_client": int(statistics.median(b["bytes_received"] for b in base)),
                "messages": int(statistics.median(b["messages"] for b in base)),
                "max_abs_err": float(np.abs(dl - r).max())}
    ratio = rec_ours["latency_s"]["median"] / rec_base["latency_s"]["median"]
    return {"model": name, "batch": 1, "network": "loopback", "samples": samples, "fxp_bits": fxp,
            "privinfer": rec_ours, "spu_direct": rec_base, "latency_ratio": round(ratio, 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", nargs="+", default=["minionn-mnist", "deepsecure-mnist"])
    ap.add_argument("--samples", type=int, default=10)
    ap.add_argument("--json", help="write the records here")
    a = ap.parse_args()
    records = []
    for name in a.model:
        rec = measure(name, a.samples)
        records.append(rec)
        o, b = rec["privinfer"], rec["spu_direct"]
        print(f"{name}: privinfer {o['latency_s']['median']:.3f} s (p25 {o['latency_s']['p25']:.3f}, p75 "
              f"{o['latency_s']['p75']:.3f}), up {o['bytes_client_to_server'] / 1e6:.2f} MB, down "
              f"{o['bytes_server_to_client'] / 1e6:.2f} MB, set-up {o['setup_s']:.1f} s / {o['setup_bytes'] / 1e6:.1f} MB, "
              f"agreement {o['argmax_agreement']}, max err {o['max_abs_err']:.1e} | direct {b['latency_s']['median']:.3f} s "
              f"(p25 {b['latency_s']['p25']:.3f}, p75 {b['latency_s']['p75']:.3f}), up {b['bytes_client_to_server'] / 1e6:.2f} MB, "
              f"down {b['bytes_server_to_client'] / 1e6:.2f} MB, {b['messages']} messages, set-up run "
              f"{b['setup_run_s']:.1f} s / {b['setup_bytes'] / 1e6:.1f} MB | ratio {rec['latency_ratio']:.3f}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(records, indent=1))


if __name__ == "__main__":
    main()
