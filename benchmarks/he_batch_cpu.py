"""Where the CPU of an end-to-end batch query goes: client, client SEAL helper, server, server SEAL helper.

    .venv/bin/python benchmarks/he_batch_cpu.py [--batch 4096] [--queries 3] [--out PATH] [--floor-only]

Why: the end-to-end target of issue 13 (cryptonets-mnist, batch 4096, >= 2000 images/s on 2 cores) is
bounded by CPU, not by the link: client and server share the machine's cores, so a query can never take
less than (CPU seconds of all four processes) / cores. This benchmark runs the real thing -- a
`PrivateSession` with the server in its own process over loopback TCP, streamed seeded uploads, both
sides' SEAL helper processes -- samples /proc/<pid>/stat of the whole process tree every 50 ms, and
reports per query: wall time, CPU seconds per process role, the CPU-bound ceiling
(batch / (total CPU / cores)) and the overlap efficiency ((total CPU / cores) / wall; 1.0 = no core ever
idle). The load average is recorded: other processes on a shared machine take cores away (the overlap
figure then reads low) and inflate CPU seconds (shared caches). Linux only (/proc).

It also measures the SEAL floor: the per-ciphertext cost of every SEAL call the query cannot avoid
(client: encode + seeded encrypt_symmetric + serialize per input position; server: seeded load per input
position, one square per unit of the first Poly layer, relinearize + rescale + square per unit of the
second), times the counts of the session's plan, in this process on one core. That many CPU seconds go to
SEAL alone whatever the engine around it does; with `cores` cores the query cannot beat
batch / (floor / cores) images per second.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _children(pid: int) -> list[int]:
    out = []
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _cpu(pid: int) -> float | None:
    """utime + stime of a process (all its threads), seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TCK
    except (OSError, IndexError, ValueError):
        return None


class TreeSampler:
    """CPU seconds per process role, sampled every `period` s: roles are 'client' (this process),
    'server' (the session's server process), 'client_helper' / 'server_helper' (their SEAL helper
    processes), 'client_other' / 'server_other' (any other child, e.g. a multiprocessing forkserver)."""

    def __init__(self, server_pid: int, period: float = 0.05):
        self.server_pid, self.period = server_pid, period
        self.last: dict[int, tuple[str, float]] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _roles(self) -> dict[int, str]:
        me = os.getpid()
        roles = {me: "client", self.server_pid: "server"}
        for side, parent in (("client", me), ("server", self.server_pid)):
            for c in _children(parent):
                if c != self.server_pid:  # the SEAL helper (batch_helper._BOOT), else e.g. a forkserver
                    roles[c] = f"{side}_helper" if "_helper_main" in _cmdline(c) else f"{side}_other"
        return roles

    def _run(self):
        while not self.stop.is_set():
            self.sample()
            self.stop.wait(self.period)

    def sample(self) -> None:
        got = {}
        for pid, role in self._roles().items():
            c = _cpu(pid)
            if c is not None:
                got[pid] = (role, c)
        with self.lock:
            self.last.update(got)  # a process that ended keeps its last reading

    def totals(self) -> dict[str, float]:
        self.sample()
        with self.lock:
            out: dict[str, float] = {}
            for role, c in self.last.values():
                out[role] = out.get(role, 0.0) + c
            return out

    def close(self):
        self.stop.set()
        self.thread.join()


def seal_floor(context, n_in: int, units1: int, units2: int, reps: int = 40) -> dict:
    """Median per-call CPU seconds of the unavoidable SEAL calls (one core, this process) and their total
    for one query of n_in input ciphertexts, units1 squares, units2 relinearize+rescale+square."""
    import tenseal.sealapi as seal
    from privinfer.protocols.he import batch_rns as rns
    from privinfer.protocols.he.seeded import SeededEncryptor, save_bytes
    kit = rns.get_kit(context)
    pid = kit.parms_ids[kit.top_level]
    scale = float(context.global_scale)
    enc = SeededEncryptor(kit.sc, context.secret_key().data, kit.encoder)
    vals = np.random.default_rng(0).uniform(0, 1, kit.slots).tolist()
    pt = seal.Plaintext()
    ev = kit.evaluator

    def timed(fn) -> float:
        fn()
        ts = []
        for _ in range(reps):
            t = time.process_time()
            fn()
            ts.append(time.process_time() - t)
        return statistics.median(ts)

    kit.encoder.encode(vals, pid, scale, pt)
    ser = enc.encryptor.encrypt_symmetric(pt)
    blob = save_bytes(ser)
    ct = rns.load_ciphertext(kit, blob, "floor")
    out3, out2 = seal.Ciphertext(kit.sc), seal.Ciphertext(kit.sc)
    ev.square(ct, out3)
    per = {
        "encode": timed(lambda: kit.encoder.encode(vals, pid, scale, pt)),
        "encrypt_symmetric": timed(lambda: enc.encryptor.encrypt_symmetric(pt)),
        "serialize_seeded": timed(lambda: save_bytes(ser)),
        "load_seeded": timed(lambda: rns.load_ciphertext(kit, blob, "floor")),
        "square": timed(lambda: ev.square(ct, out3)),
        "relinearize": timed(lambda: ev.relinearize(out3, kit.relin_keys, out2)),
        "rescale": timed(lambda: ev.rescale_to_next(out2, seal.Ciphertext(kit.sc))),
    }
    client = n_in * (per["encode"] + per["encrypt_symmetric"] + per["serialize_seeded"])
    server = n_in * per["load_seeded"] + units1 * per["square"] + \
        units2 * (per["relinearize"] + per["rescale"] + per["square"])
    return {"per_call_ms": {k: round(v * 1e3, 3) for k, v in per.items()},
            "counts": {"input_ciphertexts": n_in, "poly1_units": units1, "poly2_units": units2},
            "client_cpu_s": round(client, 3), "server_cpu_s": round(server, 3),
            "total_cpu_s": round(client + server, 3),
            "note": "per-call costs at the top level (3 data primes here); relinearize/rescale/square of the "
                    "second Poly layer run one level lower in the engine, so this slightly overstates them"}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--queries", type=int, default=3, help="measured queries (after one warm-up)")
    ap.add_argument("--model", default="cryptonets-mnist")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "he_batch_cpu.json")
    ap.add_argument("--floor-only", action="store_true", help="only the SEAL floor (no session)")
    args = ap.parse_args(argv)
    if not os.path.isdir("/proc/self/task"):
        raise SystemExit("this benchmark reads /proc (Linux only)")

    from privinfer.bench import load_model_and_data
    from privinfer.model.reference import run_reference
    from privinfer.session import PrivateSession

    load_before = os.getloadavg()
    graph, X, _, name = load_model_and_data(args.model)
    B, nq = args.batch, args.queries
    need = B * (nq + 1)
    X = np.concatenate([X] * (-(-need // len(X))))[:need]
    cores = os.cpu_count() or 1
    floor = _floor(graph, B)
    print(f"SEAL floor per query: {floor['total_cpu_s']} CPU-s (client {floor['client_cpu_s']}, server "
          f"{floor['server_cpu_s']}) -> at most {B / (floor['total_cpu_s'] / cores):.0f} images/s on {cores} cores; "
          f"per call (ms): {floor['per_call_ms']}", flush=True)
    floor["images_per_s_bound"] = round(B / (floor["total_cpu_s"] / cores), 1)
    if args.floor_only:
        res = {"command": "python benchmarks/he_batch_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
               "cores": cores, "batch": B, "seal_floor": floor,
               "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2) + "\n")
        return res
    rows = []
    t_setup = time.perf_counter()
    with PrivateSession(graph, "he", packing="batch", batch_size=B) as sess:
        setup_s = time.perf_counter() - t_setup
        sampler = TreeSampler(sess._proc.pid)
        try:
            for i in range(nq + 1):
                xb = X[i * B:(i + 1) * B]
                c0, t0 = sampler.totals(), time.perf_counter()
                out = sess.infer(xb)
                wall, c1 = time.perf_counter() - t0, sampler.totals()
                q = sess.stats.last
                ref = run_reference(graph, xb)
                cpu = {r: round(c1.get(r, 0.0) - c0.get(r, 0.0), 3) for r in sorted(set(c0) | set(c1))}
                total = sum(cpu.values())
                row = {"query": i, "warmup": i == 0, "wall_s": round(wall, 3), "cpu_s": cpu,
                       "cpu_total_s": round(total, 3), "images_per_s": round(B / wall, 1),
                       "cpu_bound_images_per_s": round(B / (total / cores), 1) if total else None,
                       "overlap": round(total / cores / wall, 3),
                       "bytes_up": q.bytes_client_to_server, "bytes_down": q.bytes_server_to_client,
                       "argmax_agreement": float(np.mean(out.argmax(1) == ref.argmax(1))),
                       "max_abs_err": float(np.max(np.abs(out - ref))), "loadavg_1min": os.getloadavg()[0]}
                rows.append(row)
                print(f"query {i}{' (warm-up)' if i == 0 else ''}: {wall:.2f} s = {B / wall:.0f} img/s, CPU {total:.2f} s "
                      f"{cpu}, ceiling {row['cpu_bound_images_per_s']} img/s, overlap {row['overlap']:.2f}, "
                      f"agreement {row['argmax_agreement']:.4f}, load {row['loadavg_1min']:.1f}", flush=True)
        finally:
            sampler.close()
    meas = [r for r in rows if not r["warmup"]] or rows
    med = statistics.median
    roles = sorted({k for r in meas for k in r["cpu_s"]})
    res = {
        "benchmark": f"he batch end to end, CPU per process ({name}, batch {B}, PrivateSession over loopback TCP)",
        "command": "python benchmarks/he_batch_cpu.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cores": cores, "setup_s": round(setup_s, 3),
        "wall_s_median": med([r["wall_s"] for r in meas]),
        "images_per_s_median": round(B / med([r["wall_s"] for r in meas]), 1),
        "cpu_s_median": {k: med([r["cpu_s"].get(k, 0.0) for r in meas]) for k in roles},
        "cpu_total_s_median": med([r["cpu_total_s"] for r in meas]),
        "cpu_bound_images_per_s_median": med([r["cpu_bound_images_per_s"] for r in meas]),
        "overlap_median": med([r["overlap"] for r in meas]),
        "seal_floor": floor,
        "queries": rows,
        "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "queries"}, indent=2))
    return res


def _floor(graph, batch: int) -> dict:
    """The SEAL floor for `graph` under the parameters the protocol picks for `batch` (params.py)."""
    from privinfer.protocols.he import _tenseal_context
    from privinfer.protocols.he.batch_stages import normalize
    from privinfer.protocols.he.params import select_params
    p = select_params(graph, "batch", batch=batch)
    ctx = _tenseal_context(p)  # what the session's client creates
    polys = [st.n_in for st in normalize(graph) if st.kind == "poly"]
    n_in = int(np.prod(graph.input_shape))
    return seal_floor(ctx, n_in, polys[0] if polys else 0, sum(polys[1:]))


if __name__ == "__main__":
    main()
