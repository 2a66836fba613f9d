"""What one BFV segment of a hybrid plan costs: the engine's own segment, counted operations, real bytes.

Why a module next to `he_cost.py`: `hybrid` (hiding="best", its default) runs every LINEAR-ONLY HE segment
(conv2d / linear / avgpool2d / flatten) in BFV with perfectly hiding hand-overs (`protocols/hybrid/bfv_seg.py`),
and falls back to CKKS only when the segment's values do not fit a plaintext modulus (`BFVSegment` raises
ParameterError). So the planner prices such a range exactly as the engine will run it:

* the segment is built by the engine's own `BFVSegment` (weight scale, plaintext modulus t, packing plan,
  output level); if that raises, the range is CKKS (`he_cost.py`), as in `hybrid`;
* the server's evaluation is counted: the compiled plan's control flow runs on a backend that mirrors
  `bfv_eval.BFVBackend` (which keeps each ciphertext in coefficient and/or NTT form, transforming at most once),
  so it counts products, additions, rotations and the NTT transforms themselves; seconds = counts x the
  per-operation BFV kernel times of `privinfer profile` (`calibrate.time_bfv`, N = 8192 is the only audited
  BFV ring);
* bytes and the hand-over work around the evaluation are measured once on the real objects: the client
  encrypts (zero) inputs, the server loads them, unmasks, evaluates, masks, floods and switches down
  (`BFVSegmentServer.run`), the client decrypts; the serialized blobs are the wire bytes.
The 2PC side of the hand-overs (mod-t lift after a BFV segment, the mod-t reduce before one: one secure
comparison each, `convert/ring.py`) is counted on real CrypTen parties in `ss_cost.count_handovers`.
"""
from __future__ import annotations

import time

import numpy as np

from ..model.ir import Graph
from .cost import Cost

BFV_OPS = ("mul_plain", "add", "add_plain", "rotate", "to_ntt", "from_ntt")


class _V:
    __slots__ = ("c", "n")

    def __init__(self, c: bool, n: bool):
        self.c, self.n = c, n


class BFVCounter:
    """The `BFVBackend` interface on form flags: counts operations and NTT transforms, no arithmetic."""

    def __init__(self):
        self.counts = {k: 0 for k in BFV_OPS}

    def _coeff(self, x: _V):
        if not x.c:
            self.counts["from_ntt"] += 1
            x.c = True

    def encode(self, values, scale, level):
        return None

    def mul_plain(self, x: _V, p):
        if not x.n:
            self.counts["to_ntt"] += 1
            x.n = True
        self.counts["mul_plain"] += 1
        return _V(False, True)

    def add(self, a: _V, b: _V):
        self.counts["add"] += 1
        if not a.c and not b.c:
            return a
        self._coeff(a)
        self._coeff(b)
        a.n = False
        return a

    def add_plain(self, x: _V, p):
        self._coeff(x)
        self.counts["add_plain"] += 1
        x.n = False
        return x

    def rotate(self, x: _V, k: int):
        self._coeff(x)
        self.counts["rotate"] += 1
        return _V(True, False)

    def rescale(self, x):
        return x

    mod_switch = rescale

    def result(self, x: _V):
        self._coeff(x)
        return x


def segment_structure(graph: Graph, start: int, stop: int, last: bool) -> dict:
    """The engine's BFV segment [start, stop): parameters, counted evaluation, and measured I/O (once).
    Raises ParameterError exactly when `hybrid` would fall back to CKKS for this range."""
    from ..protocols.convert import bfv as conv
    from ..protocols.he.bfv_eval import compile_plan
    from ..protocols.hybrid.bfv_seg import BFVSegmentClient, BFVSegmentServer
    server = BFVSegmentServer(graph, start, stop, last)
    seg = server.seg
    be = BFVCounter()
    outs = compile_plan(seg.plan, seg.program, be).evaluate([_V(True, False) for _ in range(seg.plan.input.n_ct)],
                                                            backend=be, all_outputs=True)
    for o in outs:
        be.result(o)
    client = BFVSegmentClient(graph, server.info())
    ctx = server.keyed(client.ctx.public_blobs())
    n_in = int(np.prod(graph.shapes[start]))
    t0 = time.perf_counter()
    blobs = client.upload(np.zeros(n_in), plain=start == 0)
    t_enc = time.perf_counter() - t0
    r = None if start == 0 else np.zeros(n_in, dtype=np.int64)
    # the server's work, as `BFVSegmentServer.run` does it, timed in its parts
    t0 = time.perf_counter()
    cts = [ctx.ct_from_bytes(b, "input ciphertext", level=0) for b in blobs]
    if r is not None:
        conv.unmask_input(ctx, seg.plan, cts, r)
    t_in = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = seg.evaluate(ctx, cts)
    t_eval = time.perf_counter() - t0
    t0 = time.perf_counter()
    out_blobs = conv.reveal_final(ctx, seg, outs) if last else conv.mask_to_shares(ctx, seg, outs)[0]
    t_out = time.perf_counter() - t0
    t0 = time.perf_counter()
    client.result(out_blobs) if last else client.share(out_blobs)
    t_dec = time.perf_counter() - t0
    return {"scheme": "bfv", "params": seg.params.to_json(), "weight_bits": int(seg.weight_bits),
            "n_ct": int(seg.plan.input.n_ct), "n_out_ct": int(seg.n_out_ct), "ops": be.counts,
            "out_level": int(seg.out_level), "rotation_keys": len(seg.plan.rotation_steps),
            "bytes_up": sum(len(b) for b in blobs), "bytes_down": sum(len(b) for b in out_blobs),
            # measured once: the client's encryption and decryption, the server's hand-over work (load,
            # unmask, mask, flood, switch down, serialize); the evaluation itself is priced from the counts
            "t_enc": t_enc, "t_dec": t_dec, "t_handover": t_in + t_out, "t_eval_measured": t_eval}


def segment_cost(struct: dict, cal: dict) -> Cost:
    """Per query: the client encrypts and decrypts, the server evaluates (counted x calibrated) and does the
    hand-over work around it (measured), one request and one reply."""
    k = cal["bfv"]
    server = sum(n * k[op] for op, n in struct["ops"].items()) + struct["t_handover"]
    return Cost(client_s=struct["t_enc"] + struct["t_dec"], server_s=server, bytes_up=struct["bytes_up"],
                bytes_down=struct["bytes_down"], rounds=1, depth=0)
