"""Baseline for `cheetah`: SPU's CHEETAH run directly, two processes on loopback, no privinfer in between.

Runs under the SPU venv (`.venv-spu/bin/python`), driven by `benchmarks/cheetah_bench.py`, which alternates
its queries with privinfer's so that both see the same machine load. Input: an .npz with the graph
(`__spec__` plus the weights, as `privinfer.model.ir.save_graph` writes them) and the images `__x__`. The
network is lowered to JAX by the same `lower.build` that privinfer's parties use, so both sides run the same
SPU program.

Stock usage of SPU 0.9.5: `link.create_brpc` + `api.Runtime` per party, CHEETAH over FM64 with privinfer's
20 fraction bits (`--fxp-bits`; SPU's default is 18), colocated mode (`make_shares(..., owner_rank)`: rank 0
holds the weights, rank 1 the input). One query = rank 1 sets its input, both run, rank 0 passes its output
share over a local pipe, rank 1 reconstructs. Latency is rank 1's wall time; the first run is CHEETAH's
one-time set-up. Bytes and messages are SPU's own link counters (rank 1's sent / received).

Protocol on stdin/stdout (one JSON object per line): prints {"setup": ...} once both parties are ready; then
each input line "q" runs one query on the next image and prints its record; "exit" ends.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import socket
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


def _pack(chunks) -> bytes:
    return b"".join(len(c).to_bytes(8, "big") + bytes(c) for c in chunks)


def _unpack(b: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(b):
        n = int.from_bytes(b[pos:pos + 8], "big")
        out.append(b[pos + 8:pos + 8 + n])
        pos += 8 + n
    return out


def party(rank, addrs, path, fxp_bits, share, ctl):
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
    cfg = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.CHEETAH, field=libspu.FieldType.FM64,
                               fxp_fraction_bits=fxp_bits)
    cfg.experimental_enable_colocated_optimization = True
    cfg.enable_hal_profile = True  # SPU logs its link counters after each run
    io = api.Io(2, cfg)
    desc = libspu.link.Desc()
    desc.recv_timeout_ms = 3_600_000  # rank 0 waits in `run` while the driver runs privinfer's query
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

    def query(i):
        x = X[i % len(X)][None] if rank == 1 else np.zeros_like(x0)
        t0 = time.perf_counter()
        rt.set_var("x", io.make_shares(x, libspu.Visibility.VIS_SECRET, 1)[rank])
        rt.run(exe)
        y = rt.get_var("y")
        if rank == 0:
            share.send_bytes(_pack([y.meta, *y.share_chunks]))
            return None
        peer = libspu.Share()
        parts = _unpack(share.recv_bytes())
        peer.meta, peer.share_chunks = parts[0], parts[1:]
        out = np.asarray(io.reconstruct([peer, y]))[0].tolist()
        c = comm()
        return {"latency_s": time.perf_counter() - t0, "bytes_sent": c[0], "bytes_received": c[1],
                "messages": c[2] + c[3], "logits": out}

    t0 = time.perf_counter()
    first = query(0)  # CHEETAH's one-time set-up happens in the first run
    if rank == 1:
        first["setup_s"] = time.perf_counter() - t0
        ctl.send_bytes(json.dumps(first).encode())
    i = 0
    while True:
        cmd = ctl.recv_bytes()
        if cmd != b"q":
            return
        i += 1
        out = query(i)
        if rank == 1:
            ctl.send_bytes(json.dumps(out).encode())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("npz")
    ap.add_argument("--fxp-bits", type=int, default=20)
    a = ap.parse_args()
    ctx = mp.get_context("spawn")
    addrs = [f"127.0.0.1:{_free_port()}", f"127.0.0.1:{_free_port()}"]
    s0, s1 = ctx.Pipe()
    ctl = [ctx.Pipe() for _ in range(2)]
    t0 = time.perf_counter()
    procs = [ctx.Process(target=party, args=(r, addrs, a.npz, a.fxp_bits, (s0, s1)[r], ctl[r][1]), daemon=True)
             for r in range(2)]
    [p.start() for p in procs]
    first = json.loads(ctl[1][0].recv_bytes())
    print(json.dumps({"setup": {**first, "wall_s": time.perf_counter() - t0}}), flush=True)
    for line in sys.stdin:
        if line.strip() != "q":
            break
        for c in ctl:
            c[0].send_bytes(b"q")
        print(json.dumps(json.loads(ctl[1][0].recv_bytes())), flush=True)
    for c in ctl:
        c[0].send_bytes(b"exit")
    [p.join(30) for p in procs]


if __name__ == "__main__":
    main()
