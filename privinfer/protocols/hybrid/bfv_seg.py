"""The BFV segments of a hybrid plan: linear-only HE segments whose hand-overs hide perfectly (GAZELLE).

Why beside `he_seg.py`: an HE segment made only of conv2d / linear / avgpool2d / flatten needs no CKKS
(no x², no rescaling), and in BFV its result can be masked uniformly mod t (`convert/bfv.py`). Each segment
has its own parameters (t sized from its sound value bound, `he/bfv_eval.py`) and its own keys, sent once
per session. The client derives the packing plan from the public architecture and checks its digest.
"""
from __future__ import annotations

import numpy as np

from ...errors import ProtocolError, ShapeError
from ...model.ir import Graph
from ..convert import bfv as conv
from ..he.bfv import FRAC_BITS, STAT_BITS, BFVContext, BFVParams
from ..he.bfv_eval import BFVSegment, choose_plan, n_output_cts, output_positions

LINEAR_KINDS = frozenset({"conv2d", "linear", "avgpool2d", "flatten"})


def is_linear(graph: Graph, start: int, stop: int) -> bool:
    return all(layer.kind in LINEAR_KINDS for layer in graph.layers[start:stop])


class BFVSegmentServer:
    scheme = "bfv"

    def __init__(self, graph: Graph, start: int, stop: int, last: bool):
        self.start, self.stop, self.last = start, stop, last
        self.seg = BFVSegment(graph, start, stop)
        self.t, self.weight_bits = self.seg.params.t, self.seg.weight_bits
        self.out_shape = graph.shapes[stop]

    def info(self) -> dict:
        s = self.seg
        return {"scheme": "bfv", "start": self.start, "stop": self.stop, "params": s.params.to_json(),
                "weight_bits": s.weight_bits, "rotation_steps": list(s.plan.rotation_steps),
                "plan_digest": s.plan.digest(), "input_cts": s.plan.input.n_ct, "output_cts": s.n_out_ct,
                "circuit_bits": s.circuit_bits}

    def keyed(self, blobs: list[bytes]) -> BFVContext:
        ctx = self.seg.ctx.keyed()
        ctx.load_public(blobs, self.seg.plan.rotation_steps)
        return ctx

    @property
    def n_in(self) -> int:
        return self.seg.plan.input.n_ct

    def prepare(self, ctx: BFVContext, r: np.ndarray | None) -> dict:
        """One image's input-independent work, which the server may do before its ciphertexts arrive: the
        output pads and masks (`conv.output_pads`) and, given the incoming mask r, the unmasking plaintexts."""
        return {"r": r, "unmask": None if r is None else conv.unmask_plaintexts(ctx, self.seg.plan, r),
                "pads": conv.output_pads(ctx, self.seg, self.last)}

    def run(self, ctx: BFVContext, blobs, r: np.ndarray | None, prep: dict | None = None):
        """One image: (result blobs, the server's share mod t at the outputs, or None for the last segment).
        `blobs`: its n_in input ciphertexts, any iterable (the step reads them off the wire one by one: each is
        loaded, unmasked and multiplied as it comes, while the client encrypts the next). `prep`: this image's
        `prepare` (used once; its unmasking plaintexts only if made for this r)."""
        prep = prep or {}
        pts = None
        if r is not None:
            ok = prep.get("r") is not None and np.array_equal(prep["r"], r)
            pts = prep["unmask"] if ok else conv.unmask_plaintexts(ctx, self.seg.plan, r)
        ev, n = self.seg.stream(ctx), 0
        for i, blob in enumerate(blobs):
            if i >= self.n_in:
                raise ShapeError(f"HE segment {self.start}-{self.stop - 1}: more than {self.n_in} input ciphertexts")
            ct = ctx.ct_from_bytes(blob, "input ciphertext", level=0)
            if pts is not None:
                conv.unmask_input(ctx, self.seg.plan, [ct], pts=pts[i:i + 1])
            ev.add(i, ct)
            n += 1
        if n != self.n_in:
            raise ShapeError(f"HE segment {self.start}-{self.stop - 1}: {n} input ciphertexts, expected {self.n_in}")
        outs = ev.result()
        if self.last:
            return conv.reveal_final(ctx, self.seg, outs, prep.get("pads")), None
        return conv.mask_to_shares(ctx, self.seg, outs, prep.get("pads"))


class BFVSegmentClient:
    scheme = "bfv"

    def __init__(self, graph: Graph, info: dict):
        try:
            self.start, self.stop = int(info["start"]), int(info["stop"])
            self.params = BFVParams.from_json(info["params"])
            self.weight_bits = int(info["weight_bits"])
            self.circuit_bits = float(info.get("circuit_bits", 0.0))
            steps = [int(s) for s in info["rotation_steps"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed BFV segment in WELCOME: {e!r}") from None
        if not 0 <= self.weight_bits <= 30:
            raise ProtocolError(f"weight scale 2^{self.weight_bits} out of range")
        self.graph = graph.slice(self.start, self.stop)
        self.plan = choose_plan(self.graph)
        if self.plan.digest() != info.get("plan_digest") or steps != self.plan.rotation_steps:
            raise ProtocolError(f"BFV segment {self.start}-{self.stop - 1}: the server's packing plan differs from "
                                "the one derived from the public architecture")
        self.ctx = BFVContext.create(self.params, steps)
        self.t = self.params.t
        self.positions = output_positions(self.plan)
        self.n_out_ct = n_output_cts(self.plan)
        self.n_in = self.plan.input.n_ct
        self.n_values = int(np.prod(graph.shapes[self.start]))

    def upload(self, value: np.ndarray, plain: bool) -> list[bytes]:
        """One image: the client's plaintext (first segment) or z = (x + h + r) mod t revealed by the 2PC."""
        return list(self.upload_iter(value, plain))

    def upload_iter(self, value: np.ndarray, plain: bool):
        """`upload`, one ciphertext at a time (the step sends each as soon as it is made)."""
        z = conv.encode_input(value, self.t) if plain else conv.check_share(value, self.t, self.n_values)
        return conv.upload_iter(self.ctx, self.plan, z)

    def share(self, blobs: list[bytes]) -> np.ndarray:
        return conv.client_share(self.ctx, blobs, self.positions, self.n_out_ct)

    def result(self, blobs: list[bytes]) -> np.ndarray:
        return conv.client_result(self.ctx, blobs, self.positions, self.n_out_ct, FRAC_BITS + self.weight_bits)

    def reshape(self, flat: np.ndarray) -> np.ndarray:
        shape = self.graph.output_shape
        if flat.shape[1] != int(np.prod(shape)):
            raise ShapeError(f"BFV segment output has {flat.shape[1]} values, expected {shape}")
        return flat.reshape(flat.shape[0], *shape)

    def conversion(self) -> dict:
        return {"at": self.stop, "kind": "he->ss", "scheme": "bfv", "mask": f"uniform mod t (t = {self.t}, "
                f"{self.params.t_bits} bits) in every slot", "hiding": "perfect", "hiding_bits": None,
                "circuit_privacy": f"fresh encryption of zero + noise flood: {self.circuit_bits} statistical bits "
                                   f"against a worst-case noise bound ({STAT_BITS} wanted)",
                "circuit_bits": self.circuit_bits}

    def conversion_in(self, at: int) -> dict:
        return {"at": at, "kind": "ss->he", "scheme": "bfv", "mask": f"uniform mod t (t = {self.t})",
                "hiding": "perfect", "hiding_bits": None}
