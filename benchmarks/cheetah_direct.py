"""Baseline for `cheetah`: SPU's CHEETAH run directly, two processes on loopback, no privinfer in between.

Runs under the SPU venv (`.venv-spu/bin/python`; started by `benchmarks/cheetah_bench.py`, which compares it
with `privinfer bench --protocol cheetah` in the same run). Input: an .npz with the graph (`__spec__` and the
weights, as `privinfer.model.ir.save_graph` writes it) and the images `__x__`. The network is lowered to JAX by
the same `lower.build` that privinfer's parties use, so both sides run the same SPU executable.

Stock usage of SPU 0.9.5: `link.create_brpc` + `api.Runtime` per party, CHEETAH over FM64 with privinfer's
20 fraction bits (`--fxp-bits`), colocated mode (`make_shares(..., owner_rank)`: rank 0 holds the weights, rank 1 the input).
One query = rank 1 sets its input, both run, rank 0 passes its output share over a local pipe, rank 1
reconstructs. Latency is rank 1's wall time per query; the first run is CHEETAH's one-time set-up. Bytes and
messages are SPU's own link counters (rank 1's sent/received). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import socket
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "privinfer", "protocols", "cheetah"))
import lower  # noqa: E402

LINK_RE = re.compile(rb"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), recv actions (\d+)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def party(rank, addrs, path, samples, fxp_bits, conn, result):
    import spu.api as api
    from spu import libspu
    from spu.utils import frontend as fe
    log = tempfile.TemporaryFile()
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    with np.load(path, allow_pickle=False) as z:
        spec = json.loads(bytes(z["__spec__"]).decode())
        X = z["__x__"]
        weights = [z[n] for n in lower.param_names(spec)]
    cfg = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.CHEETAH, field=libspu.FieldType.FM64, fxp_fraction_bits=fxp_bits)
    cfg.experimental_enable_colocated_optimization = True
    cfg.enable_hal_profile = True
    io = api.Io(2, cfg)
    desc = libspu.link.Desc()
    for r, a in enumerate(addrs):
        desc.add_party(f"p{r}", a)
    rt = api.Runtime(libspu.link.create_brpc(desc, rank), cfg)
    params, x0 = lower.example_args(spec, 1)
    names = [f"w{i}" for i in range(len(params))] + ["x"]
    exe, _ = fe.compile(fe.Kind.JAX, lower.build(spec), (params, x0), {}, names,
                        [libspu.Visibility.VIS_SECRET] * len(names), lambda o: ["y"])
    for n, w in zip(names, weights):
        rt.set_var(n, io.make_shares(w if rank == 0 else np.zeros_like(w), libspu.Visibility.VIS_SECRET, 0)[rank])

    def comm():
        log.seek(0)
        m = list(LINK_RE.finditer(log.read()))[-1]
        log.seek(0)
        log.truncate()
        return [int(v) for v in m.groups()]

    lat, comms, outs = [], [], []
    for i in range(samples + 1):  # run 0: the set-up (base OTs, silent-OT seeds, keys)
        x = X[i % len(X)][None] if rank == 1 else np.zeros_like(x0)
        t0 = time.perf_counter()
        rt.set_var("x", io.make_shares(x, libspu.Visibility.VIS_SECRET, 1)[rank])
        rt.run(exe)
        share = rt.get_var("y")
        if rank == 0:
            conn.send_bytes(share.meta)
            conn.send_bytes(b"".join(struct_len(c) for c in share.share_chunks))
        else:
            peer = libspu.Share()
            peer.meta = conn.recv_bytes()
            peer.share_chunks = split_len(conn.recv_bytes())
            outs.append(np.asarray(io.reconstruct([peer, share]))[0].tolist())
        lat.append(time.perf_counter() - t0)
        comms.append(comm())
    if rank == 1:
        result.send_bytes(json.dumps({"lat": lat, "comm": comms, "out": outs}).encode())


def struct_len(b: bytes) -> bytes:
    return len(b).to_bytes(8, "big") + bytes(b)


def split_len(b: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(b):
        n = int.from_bytes(b[pos:pos + 8], "big")
        out.append(b[pos + 8:pos + 8 + n])
        pos += 8 + n
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("npz")
    ap.add_argument("--samples", type=int, default=5)
    ap.add_argument("--fxp-bits", type=int, default=20, help="fraction bits (SPU's default is 18; privinfer uses 20)")
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    addrs = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    share0, share1 = ctx.Pipe()
    res_parent, res_child = ctx.Pipe()
    t0 = time.perf_counter()
    p0 = ctx.Process(target=party, args=(0, addrs, a.npz, a.samples, a.fxp_bits, share0, None), daemon=True)
    p1 = ctx.Process(target=party, args=(1, addrs, a.npz, a.samples, a.fxp_bits, share1, res_child), daemon=True)
    p0.start()
    p1.start()
    r = json.loads(res_parent.recv_bytes())
    wall = time.perf_counter() - t0
    p0.join(30)
    p1.join(30)
    lat, comm = r["lat"], r["comm"]
    q = np.percentile(lat[1:], [25, 50, 75])
    print(json.dumps({
        "latency_s": {"median": float(q[1]), "p25": float(q[0]), "p75": float(q[2])},
        "setup_run_s": lat[0], "setup_bytes": comm[0][0] + comm[0][1], "total_wall_s": wall,
        "bytes_client_to_server": int(statistics.median(c[0] for c in comm[1:])),
        "bytes_server_to_client": int(statistics.median(c[1] for c in comm[1:])),
        "messages": int(statistics.median(c[2] + c[3] for c in comm[1:])),
        "samples": a.samples, "logits": r["out"][1:]}))


if __name__ == "__main__":
    main()
