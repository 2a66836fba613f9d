"""Load test: K concurrent clients per protocol against `privinfer serve --workers W`, loopback only.

    .venv/bin/python benchmarks/load.py                       # long version (~15 min on 2 cores)
    .venv/bin/python benchmarks/load.py --protocols he --clients 8 --duration 120 --workers 1 2
    .venv/bin/python benchmarks/load.py --short               # what `make test` runs (seconds)

For each protocol and worker count: one server process tree (`privinfer serve`, as a user runs it),
a phase with one client alone, then a phase with K client processes, each for --duration seconds
(and at most --max-queries per client). Reported per phase: throughput, p50/p95/p99 latency, errors,
wrong answers (against the plaintext reference), server CPU (cores busy) and peak RSS per third of the
phase (growth shows as rising thirds). After each server stops (SIGTERM) the record says whether any of
its processes was left behind. Then, with --ray-batch B: an encrypted batch of B images (he batch
packing, cryptonets-mnist, N=8192: ceil(B/4096) slot groups) evaluated by one process on one core, one
process on all cores (the engine's SEAL helper), and Ray tasks on a local Ray with --ray-cpus CPUs.
The machine's load average is recorded: on a shared machine every figure is slowed by others.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from privinfer._process import alive  # noqa: E402
from privinfer.serving.load import MODELS, ServerProcess, load_average, run_phase, tree  # noqa: E402


def serve_and_load(protocol: str, workers: int, clients: int, duration: float, max_queries: int,
                   model: str | None, serve_args: list[str], with_alone: bool = True, repeat: int = 1) -> dict:
    model = model or MODELS[protocol]
    srv = ServerProcess(protocol, model, workers, max_sessions=max(clients, 1) + 2, extra=serve_args)
    family = tree(srv.proc.pid)
    alones, manys = [], []
    try:
        for _ in range(repeat):  # alternate the phases: a shared machine's load drifts between them
            if with_alone:
                alones.append(run_phase(srv, protocol, model, 1, duration, max_queries))
            if clients > 1:
                manys.append(run_phase(srv, protocol, model, clients, duration, max_queries))
    finally:
        family = sorted(set(family) | set(tree(srv.proc.pid)))  # with the per-session children now open
        code = srv.stop()
    end = time.monotonic() + 10.0  # orphans exit with their parent within a poll interval
    while time.monotonic() < end and any(alive(p) for p in family):
        time.sleep(0.2)
    left = [_cmdline(p) for p in family if alive(p)]
    alone, many = _median_phase(alones), _median_phase(manys)
    rec = {"protocol": protocol, "model": model, "workers": workers, "alone": alone, "concurrent": many,
           "repeats": {"alone_qps": [p["throughput_qps"] for p in alones],
                       "concurrent_qps": [p["throughput_qps"] for p in manys]},
           "server_exit_code": code, "processes_left_behind": len(left), "left_behind": left}
    if many and alone and alone["throughput_qps"]:
        rec["speedup_vs_alone"] = round(many["throughput_qps"] / alone["throughput_qps"], 2)
    return rec


def _median_phase(phases: list[dict]) -> dict | None:
    """The phase with the median throughput (the figures of one real phase, not a mix)."""
    if not phases:
        return None
    return sorted(phases, key=lambda p: p["throughput_qps"])[(len(phases) - 1) // 2]


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")[:200]
    except OSError:
        return str(pid)


def ray_batch(images: int, ray_cpus: int, n: int = 8192) -> dict:
    """he batch packing on B images: one process (1 core / all cores) vs Ray tasks (one per slot group)."""
    from privinfer.model.ir import load_graph
    from privinfer.model.reference import run_reference
    from privinfer.protocols.he import batch as B
    from privinfer.protocols.he import executor as hex_
    from privinfer.zoo.data import load_dataset
    graph = load_graph(ROOT / "privinfer" / "zoo" / "weights" / "cryptonets-mnist.npz")
    params = B.suggest_params(graph, n)
    ctx = B.make_context(n, params["coeff_bits"], params["scale_bits"])
    pub = B.public_copy(ctx)
    slots = n // 2
    x, _ = load_dataset("digits", "test")
    x = np.concatenate([x] * math.ceil(images / len(x)))[:images].astype(np.float64)
    t = time.perf_counter()
    blobs = hex_.encrypt_groups(ctx, x, slots)
    enc_s = time.perf_counter() - t
    ref = run_reference(graph, x)
    out = {"images": images, "N": n, "slots": slots, "groups": hex_.n_groups(images, slots),
           "upload_bytes": sum(len(b) for b in blobs), "client_encrypt_s": round(enc_s, 2), "modes": {}}

    def measure(name, job):
        k = min(out["groups"], ray_cpus)  # warm-up: plan, operator caches, one group per Ray worker
        job.evaluate(graph, blobs[:k * len(blobs) // out["groups"]], min(images, k * slots), slots)
        t = time.perf_counter()
        res = job.evaluate(graph, blobs, images, slots)
        dt = time.perf_counter() - t
        y = hex_.decrypt_groups(ctx, res, images, 10, slots)
        out["modes"][name] = {"seconds": round(dt, 2), "images_per_s": round(images / dt, 1),
                              "max_abs_err": float(np.abs(y - ref).max()),
                              "argmax_agreement": float(np.mean(y.argmax(1) == ref.argmax(1)))}
        job.close()

    measure("one process, 1 core", hex_.LocalExecutor(threads=1).open(pub))
    measure("one process, all cores (SEAL helper)", hex_.LocalExecutor(threads=os.cpu_count()).open(pub))
    import ray
    ray.init(num_cpus=ray_cpus, include_dashboard=False, log_to_driver=False)
    try:
        t = time.perf_counter()
        job = hex_.RayExecutor(threads=1).open(pub)
        out["ray_keys_put_s"] = round(time.perf_counter() - t, 3)
        measure(f"local Ray, {ray_cpus} CPUs, 1 task per group", job)
    finally:
        ray.shutdown()
    m = out["modes"]
    base = m["one process, 1 core"]["images_per_s"]
    for v in m.values():
        v["vs_one_core"] = round(v["images_per_s"] / base, 2)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocols", nargs="+", default=["plain", "he", "ss", "noisy"])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--duration", type=float, default=30.0, help="seconds per phase")
    ap.add_argument("--max-queries", type=int, default=100000, help="per client and phase")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=1, help="alternate alone/concurrent phases this many times")
    ap.add_argument("--no-alone", action="store_true", help="skip the one-client phase (long memory runs)")
    ap.add_argument("--model", default=None, help="one zoo model for every protocol (default: per protocol)")
    ap.add_argument("--serve-arg", action="append", default=[],
                    help="PROTOCOL=ARG: extra `privinfer serve` argument (repeatable), e.g. ss=--dealer=local")
    ap.add_argument("--ray-batch", type=int, default=16384, help="images for the Ray comparison (0: skip)")
    ap.add_argument("--ray-cpus", type=int, default=2)
    ap.add_argument("--short", action="store_true",
                    help="seconds, not minutes: plain only, 1 worker, 2 clients for 1.5 s, no alone phase, no Ray")
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args(argv)
    if a.short:
        a.protocols, a.clients, a.duration, a.max_queries, a.workers, a.ray_batch = ["plain"], 2, 1.5, 50, [1], 0
    report = {"command": "python benchmarks/load.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "cores": os.cpu_count(), "load_average_before": load_average(), "runs": []}
    for proto in a.protocols:
        extra = [s.split("=", 1)[1] for s in a.serve_arg if s.startswith(proto + "=")]
        for w in a.workers:
            rec = serve_and_load(proto, w, a.clients, a.duration, a.max_queries, a.model, extra, not (a.short or a.no_alone),
                                 a.repeat)
            report["runs"].append(rec)
            print(_line(rec), flush=True)
    if a.ray_batch:
        report["ray_batch"] = ray_batch(a.ray_batch, a.ray_cpus)
        for k, v in report["ray_batch"]["modes"].items():
            print(f"he batch {a.ray_batch} images, {k}: {v['seconds']} s, {v['images_per_s']} images/s "
                  f"({v['vs_one_core']}x one core), max err {v['max_abs_err']:.2e}", flush=True)
    report["load_average_after"] = load_average()
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(report, indent=1))
    return report


def _line(rec: dict) -> str:
    one, many = rec["alone"], rec["concurrent"] or rec["alone"]
    head = f"alone {one['throughput_qps']} q/s p50 {one['latency_ms']['p50']} ms | " if one else ""
    return (f"{rec['protocol']:6s} workers={rec['workers']} {head}{many['clients']} clients {many['throughput_qps']} q/s "
            f"(x{rec.get('speedup_vs_alone', 1.0)}) p50/p95/p99 {many['latency_ms']['p50']}/"
            f"{many['latency_ms']['p95']}/{many['latency_ms']['p99']} ms, errors {many['errors'] or 0}, "
            f"wrong {many['wrong_answers']}, server cpu {many['server_cpu_cores']} cores, peak rss "
            f"{many['server_peak_rss_mb_by_third']} MB, left behind {rec['processes_left_behind']}")


if __name__ == "__main__":
    main()
