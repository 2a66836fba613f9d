"""Throughput of the CryptoNets-style batch engine (privinfer.protocols.he.batch) on cryptonets-mnist.

    .venv/bin/python benchmarks/he_batch.py --batch 4096 --n 8192 [--runs 3] [--weights zoo]

Measures (time.perf_counter, medians over --runs after one warm-up run): client encryption, server
evaluation (with its per-phase split), client decryption, upload/download bytes, the error against the
plaintext reference, and whether SEAL releases the GIL (1 vs 2 threads on the same SEAL work). Writes
benchmarks/results/he_batch.json (or --out). The machine's load average is recorded: other processes on
a shared machine slow every figure down.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def cryptonets_graph(weights: str):
    import torch
    from torch import nn
    from privinfer.model import compile_model
    from privinfer.model.torch_layers import Square
    if weights == "zoo":
        from privinfer.model.ir import load_graph
        path = ROOT / "privinfer" / "zoo" / "weights" / "cryptonets-mnist.npz"
        return load_graph(path), f"zoo ({path.name})"
    torch.manual_seed(0)
    m = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 5, 5, stride=2), Square(), nn.Flatten(),
                      nn.Linear(845, 100), Square(), nn.Linear(100, 10))
    return compile_model(m, (1, 28, 28)), "random (torch default init, seed 0)"


def inputs(batch: int, rng) -> tuple[np.ndarray, str]:
    try:
        from privinfer.zoo.data import load_dataset
        x, _ = load_dataset("digits", "test")
        reps = -(-batch // len(x))
        return np.concatenate([x] * reps)[:batch].astype(np.float64), "digits test set (repeated)"
    except Exception:
        return rng.uniform(0, 1, (batch, 1, 28, 28)), "uniform [0, 1]"


def gil_check(ctx) -> dict:
    """Time the same SEAL multiply_plain work on 1 and on 2 threads."""
    import tenseal.sealapi as seal
    from privinfer.protocols.he import batch_rns as rns
    kit = rns.get_kit(ctx)
    lvl = kit.top_level
    cts = []
    for _ in range(2):
        ct = seal.Ciphertext(kit.sc)
        kit.pk_encryptor.encrypt_zero(kit.parms_ids[lvl], ct)
        ct.scale = 2.0 ** 20
        cts.append(ct)
    pt = seal.Plaintext()
    kit.encoder.encode(0.5, kit.parms_ids[lvl], 2.0 ** 20, pt)
    reps = 200

    def work(k):
        ev = seal.Evaluator(kit.sc)
        out = seal.Ciphertext(kit.sc)
        for _ in range(reps):
            ev.multiply_plain(cts[k], pt, out)

    t = time.perf_counter()
    work(0)
    work(1)
    one = time.perf_counter() - t
    t = time.perf_counter()
    with ThreadPoolExecutor(2) as ex:
        list(ex.map(work, [0, 1]))
    two = time.perf_counter() - t
    return {"multiply_plain_us": one / (2 * reps) * 1e6, "seconds_1_thread": one, "seconds_2_threads": two,
            "speedup": one / two, "releases_gil": bool(one / two > 1.3)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--n", type=int, default=8192)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--weights", choices=["random", "zoo"], default="random")
    ap.add_argument("--coeff-bits", type=str, default=None, help="comma separated, e.g. 50,52,52,24,40")
    ap.add_argument("--scale-bits", type=int, default=None)
    ap.add_argument("--no-helper", action="store_true", help="no second SEAL process")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "he_batch.json")
    args = ap.parse_args(argv)
    if args.no_helper:
        os.environ["PRIVINFER_HE_BATCH_HELPER"] = "0"

    from privinfer.model.reference import run_reference
    from privinfer.protocols.he import batch as B
    import tenseal

    load_before = os.getloadavg()
    graph, wdesc = cryptonets_graph(args.weights)
    t = time.perf_counter()
    if args.coeff_bits:
        params = {"coeff_bits": [int(v) for v in args.coeff_bits.split(",")],
                  "scale_bits": args.scale_bits or 28}
    else:
        # the protocol's choice (params.select_params): a batch filling whole slot groups needs no output mask
        params = B.suggest_params(graph, args.n, full_groups=args.batch % (args.n // 2) == 0)
        if args.scale_bits:
            params["scale_bits"] = args.scale_bits
    suggest_s = time.perf_counter() - t
    ctx = B.make_context(args.n, params["coeff_bits"], params["scale_bits"])
    pub = B.public_copy(ctx)
    slots = args.n // 2
    if not 1 <= args.batch <= slots:
        raise SystemExit(f"--batch must be in [1, {slots}] for N={args.n}")
    rng = np.random.default_rng(0)
    x, xdesc = inputs(args.batch, rng)
    ref = run_reference(graph, x)

    gil = gil_check(ctx)
    enc, srv, dec, phases = [], [], [], []
    errs, agree = [], []
    up = down = 0
    stats = {}
    for r in range(args.runs + 1):  # run 0 warms up (helper start, plan, operator caches)
        t = time.perf_counter()
        blobs = B.client_encrypt(ctx, x)
        te = time.perf_counter() - t
        stats = {}
        t = time.perf_counter()
        out = B.server_evaluate(pub, graph, blobs, args.batch, threads=args.threads, stats=stats)
        tsrv = time.perf_counter() - t
        t = time.perf_counter()
        y = B.client_decrypt(ctx, out, args.batch, 10)
        td = time.perf_counter() - t
        up, down = sum(map(len, blobs)), sum(map(len, out))
        errs.append(float(np.abs(y - ref).max()))
        agree.append(float((y.argmax(1) == ref.argmax(1)).mean()))
        print(f"run {r}{' (warm-up)' if r == 0 else ''}: encrypt {te:.2f}s  server {tsrv:.2f}s  "
              f"decrypt {td:.2f}s  max|err| {errs[-1]:.2e}  load {os.getloadavg()[0]:.1f}", flush=True)
        if r:
            enc.append(te)
            srv.append(tsrv)
            dec.append(td)
            phases.append(stats["timings"])
        del blobs, out

    med = statistics.median
    phase_med = {k: med([p[k] for p in phases]) for k in phases[0] if isinstance(phases[0][k], float)}
    cpu = [sum(v for k, v in p.items() if k.endswith("_cpu_s")) for p in phases]
    res = {
        "benchmark": "he_batch cryptonets-mnist",
        "command": "python benchmarks/he_batch.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "network": "cryptonets-mnist: pad 28->29, conv 5x5/2 x5 (845), x^2, FC 100, x^2, FC 10",
        "weights": wdesc, "inputs": xdesc,
        "N": args.n, "slots": slots, "batch": args.batch, "coeff_bits": params["coeff_bits"],
        "scale_bits": params["scale_bits"], "suggest_params_s": suggest_s,
        "plan": stats.get("plan"),
        "runs": args.runs, "threads": args.threads, "helper_process": bool(phases[0].get("helper")),
        "server_s_median": med(srv), "server_s_all": srv,
        "server_images_per_s": args.batch / med(srv),
        "client_encrypt_s_median": med(enc), "client_decrypt_s_median": med(dec),
        "end_to_end_images_per_s": args.batch / (med(enc) + med(srv) + med(dec)),
        "server_phases_s_median": phase_med,
        "server_cpu_s_median": med(cpu),
        "server_cpu_note": "CPU seconds of the server process (all threads) plus its SEAL helper process; "
                           "on an otherwise idle machine with 2 cores, wall time is at least half of it",
        "upload_bytes": up, "download_bytes": down,
        "upload_bytes_per_image": up / args.batch,
        "max_abs_err_vs_reference": max(errs[1:]), "reference_max_abs_logit": float(np.abs(ref).max()),
        "argmax_agreement": min(agree[1:]),
        "seal_gil_check": gil,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "tenseal": tenseal.__version__, "numpy": np.__version__,
                    "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
        "anchor": "CryptoNets (ICML'16) ~59k predictions/h = ~16 images/s; 250 s per 8192 batch (?)",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: res[k] for k in ("server_s_median", "server_images_per_s", "server_cpu_s_median",
                                          "client_encrypt_s_median", "client_decrypt_s_median",
                                          "max_abs_err_vs_reference")}, indent=2))
    print("phases:", {k: round(v, 3) for k, v in phase_med.items()})
    print(f"wrote {args.out}")
    return res


if __name__ == "__main__":
    main()
