"""The HE segments of a hybrid plan: one `he` latency engine per segment, keys per segment, sent once.

Why per segment: each HE segment is its own CKKS program (its depth, its N, its packing), built by the `he`
protocol's own machinery on the sub-graph `graph.slice(start, stop)`; the client derives the same plan from
the public architecture and checks the digest. Keys for every HE segment travel once, in the set-up.
"""
from __future__ import annotations

import numpy as np

from ...errors import ParameterError, ProtocolError, ShapeError
from ...model.ir import Graph
from ..he import HE, _KeyedContext
from ..he.context import CKKSContext
from ..he.latency import CompiledPlan, SealBackend, plan_latency
from ..he.params import DEFAULT_VALUE_BITS, HEParams, select_params
from ..he.program import build_program

#: extra q0 bits asked for a masked segment's output, tried from the largest: the HE -> shares mask must fit in
#: q0 next to the value (see convert.py); q0 is one prime of at most 60 bits and the scale stays >= 2^28 (at
#: 2^22 the logits of cryptonets-mnist drift by 2e-2), so 60 - 2 - 28 - 10 = 20 bits is what fits
#: below 16 bits the segment is refused rather than run with a mask that hides (almost) nothing
HIDING_TRY_BITS = (40, 30, 26, 20, 16)
MIN_SCALE_BITS = 28


class _MaskedSegment:
    """A segment whose result leaves masked: no 0/1 output mask (every slot gets a uniform mask instead), and
    q0 sized for value + mask: `select_params` with value_bits raised by the hiding wanted, as far as it fits."""

    def __init__(self, graph: Graph):
        self.program = build_program(graph)
        err = None
        for extra in HIDING_TRY_BITS:
            try:
                params = select_params(self.program, "latency", value_bits=DEFAULT_VALUE_BITS + extra,
                                       min_scale_bits=MIN_SCALE_BITS)
                break
            except ParameterError as e:
                err = e
        else:
            raise ParameterError(f"no CKKS parameters carry a {HIDING_TRY_BITS[-1]}-bit mask next to this segment's "
                                 f"values ({err}); run it under ss, or end the plan with it") from None
        self.latency_params, self.value_bits = params, DEFAULT_VALUE_BITS
        self.plan = plan_latency(self.program, params.slots)
        self.ctx = CKKSContext.for_params(params)
        self.compiled = CompiledPlan(self.plan, self.program, SealBackend(self.ctx),
                                     input_scale=2.0 ** params.input_scale_bits, drop_primes=self.ctx.drop_primes,
                                     scale_bits=params.scale_bits, output_scale_bits=params.output_scale_bits)


class HESegmentServer:
    """Server-wide state of one HE segment (parameters, plan, encoded weights)."""

    def __init__(self, graph: Graph, start: int, stop: int, last: bool, he_options: dict):
        """The plan's last segment returns logits: the `he` circuit-privacy policy (flood) applies to it.
        Any other segment's result leaves masked (`convert.py`), so it takes the smallest parameters."""
        self.start, self.stop = start, stop
        self.graph = graph.slice(start, stop)
        self.he = HE(self.graph, **he_options) if last else _MaskedSegment(self.graph)

    def info(self) -> dict:
        he = self.he
        return {"start": self.start, "stop": self.stop, "params": he.latency_params.to_json(),
                "rotation_steps": list(he.plan.rotation_steps), "plan_digest": he.plan.digest(),
                "input_cts": he.plan.input.n_ct}

    def keyed(self, blobs: list[bytes]) -> _KeyedContext:
        ctx = _KeyedContext(self.he.ctx)
        ctx.load_public(blobs, self.he.plan.rotation_steps)
        return ctx

    def load_inputs(self, ctx, blobs: list[bytes]) -> list:
        expect = 2.0 ** self.he.latency_params.input_scale_bits
        cts = []
        for b in blobs:
            ct = ctx.ct_from_bytes(b, "input ciphertext", level=0)
            if ct.scale != expect:
                raise ProtocolError(f"input ciphertext at scale {ct.scale:g}, the plan expects 2^"
                                    f"{self.he.latency_params.input_scale_bits}")
            cts.append(ct)
        return cts

    def evaluate(self, ctx, cts: list):
        return self.he.compiled.evaluate(cts, backend=SealBackend(ctx))


class HESegmentClient:
    """The client's half of one HE segment: its keys, and the plan derived from the public architecture."""

    def __init__(self, graph: Graph, info: dict):
        try:
            self.start, self.stop = int(info["start"]), int(info["stop"])
            self.params = HEParams.from_json(info["params"])
            steps = [int(s) for s in info["rotation_steps"]]
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed HE segment in WELCOME: {e!r}") from None
        if self.params.security_bits != 128:
            raise ProtocolError("server proposed parameters below 128-bit security")
        self.graph = graph.slice(self.start, self.stop)
        self.plan = plan_latency(build_program(self.graph), self.params.slots)
        if self.plan.digest() != info.get("plan_digest") or steps != self.plan.rotation_steps:
            raise ProtocolError(f"HE segment {self.start}-{self.stop - 1}: the server's packing plan differs from "
                                "the one derived from the public architecture")
        self.ctx = CKKSContext.create(self.params, steps)
        self.n_ct = self.plan.input.n_ct
        self.scale = 2.0 ** self.params.input_scale_bits

    def outputs(self, res: list[bytes], batch: int) -> list[bytes]:
        if len(res) != batch:
            raise ProtocolError(f"expected {batch} result ciphertexts, got {len(res)}")
        return res

    def reshape(self, flat: np.ndarray) -> np.ndarray:
        shape = self.graph.output_shape
        if flat.shape[1] != int(np.prod(shape)):
            raise ShapeError(f"HE segment output has {flat.shape[1]} values, expected {shape}")
        return flat.reshape(flat.shape[0], *shape)
