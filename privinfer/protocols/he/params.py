"""Automatic CKKS parameters from the compiled IR, always within the HE standard's 128-bit bounds.

The front door of the parameter search, for both packings: `select_params` validates the request, derives
the value bits (explicit, from calibration data, or the default), and hands the program to the latency
packing's bit-budget search (`latency_params.py`) or chooses the batch packing's chain here (one image per
slot: the batch engine's `batch_params.suggest_params` when present, else a uniform chain of `depth` equal
primes). The parameter set itself, its bounds and constants live in `ckks_params.py`; they are re-exported
here, where callers have always imported them.
"""
from __future__ import annotations

import importlib
import math

import numpy as np

from ...errors import ParameterError, ResourceLimitError
from ...model.ir import Graph
from .ckks_params import (BATCH_MIN_PRECISION_BITS, DEFAULT_MAX_SCALE_BITS, DEFAULT_MIN_SCALE_BITS,  # noqa: F401
                          DEFAULT_VALUE_BITS, FAST_MASK_BITS, FLOOD_MASK_BITS, FLOOD_MAX_SCALE_BITS,
                          FLOOD_MIN_SCALE_BITS, INPUT_HEADROOM_BITS, MASK_BITS, MAX_BITS_128, MAX_DATA_PRIME_BITS,
                          MAX_PRIME_BITS, MIN_WEIGHT_BITS, RING_DEGREES, SPECIAL_MARGIN_BITS, WEIGHT_BITS_BELOW_SCALE,
                          HEParams, _min_prime_bits, _with_special, params_digest)
from .latency_params import mask_options, select_latency  # noqa: F401  (mask_options: imported from here)
from .program import Affine, Program, build_program


def program_of(graph_or_program) -> Program:
    """The HE program of an IR graph (a program passes through): the searches read its structure."""
    return graph_or_program if isinstance(graph_or_program, Program) else build_program(graph_or_program)


def value_bits_from_data(graph_or_program, X, margin_bits: int = 2) -> int:
    """Integer bits of the largest magnitude any intermediate takes on `X` (calibration), plus a margin."""
    prog = program_of(graph_or_program)
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    peak = float(np.abs(X).max()) if X.size else 1.0
    for x in X[: min(len(X), 256)]:
        v = x
        for op in prog.ops:
            if isinstance(op, Affine):
                v = op.A @ v + op.b  # partial sums of the diagonal method stay within the margin bits
            elif op.kind == "square":
                v = v * v
            else:
                u2 = v * v + op.const
                peak = max(peak, float(np.abs(u2).max()))
                v = v * u2
            peak = max(peak, float(np.abs(v).max()))
    return max(4, int(math.ceil(math.log2(max(peak, 1.0)))) + margin_bits)


def select_params(graph, packing: str = "latency", value_bits: int | None = None, batch: int = 1, *,
                  calibration=None, max_scale_bits: int = DEFAULT_MAX_SCALE_BITS,
                  min_scale_bits: int = DEFAULT_MIN_SCALE_BITS, min_N: int = 4096, mask: bool = False,
                  flood: bool = False) -> HEParams:
    """Choose CKKS parameters for `graph` (an IR Graph or an HE Program) under `packing`.

    `value_bits`: integer bits of the largest intermediate value (else from `calibration` data, else 10).
    `mask` (latency): budget the 0/1 mask that zeroes every slot but the logits (its own level with `flood`,
    else FAST_MASK_BITS more in q0).
    `flood` (latency): circuit-private mode; insist on scales >= FLOOD_MIN_SCALE_BITS (a larger ring where
    needed), falling back to the usual range when even N=32768 cannot hold them.
    Raises ParameterError when the network is too deep for the largest 128-bit parameters.
    """
    if packing not in ("latency", "batch"):
        raise ParameterError(f"packing must be 'latency' or 'batch', got {packing!r}")
    if value_bits is None:
        value_bits = value_bits_from_data(graph, calibration) if calibration is not None else DEFAULT_VALUE_BITS
    vb = int(value_bits)
    if packing == "batch":
        return _select_batch(graph, batch, vb, max_scale_bits, min_scale_bits, min_N)
    return select_latency(program_of(graph), vb, max_scale_bits=max_scale_bits, min_scale_bits=min_scale_bits,
                          min_N=min_N, mask=mask, flood=flood)


# --- batch packing ---------------------------------------------------------------------------------
def batch_depth(graph: Graph) -> int:
    """Levels of the batch engine: its own `depth(graph)` when present, else one per weighted/poly layer."""
    try:
        mod = importlib.import_module("privinfer.protocols.he.batch")
        if hasattr(mod, "depth"):
            return int(mod.depth(graph))
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("privinfer"):
            raise
    d = 0
    for layer in graph.layers:
        if layer.kind in ("conv2d", "linear"):
            d += 1
        elif layer.kind == "avgpool2d":
            d += 1
        elif layer.kind == "poly" and layer.degree >= 2:
            d += int(math.ceil(math.log2(layer.degree))) + (0 if layer.coeffs in ((0.0, 0.0, 1.0),) else 1)
    return max(d, 1)


def _select_batch(graph, batch: int, vb: int, max_t: int, min_t: int, min_N: int) -> HEParams:
    if not isinstance(graph, Graph):
        raise ParameterError("batch packing parameters need the IR graph")
    batch = int(batch)
    if batch < 1:
        raise ParameterError(f"batch must be >= 1, got {batch}")
    if batch > RING_DEGREES[-1] // 2:
        raise ResourceLimitError(f"batch {batch} exceeds the {RING_DEGREES[-1] // 2} slots of the largest ring")
    d = batch_depth(graph)
    suggest = None
    try:  # the batch engine knows best which chain its planner can use: ask it when it offers
        suggest = getattr(importlib.import_module("privinfer.protocols.he.batch"), "suggest_params", None)
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("privinfer"):
            raise
    if suggest is not None:
        for N in RING_DEGREES:
            if N < min_N or N // 2 < batch:
                continue
            try:
                # NB: the chain is chosen for these weights' bounds and published in WELCOME (a few bits about
                # their magnitudes); a weight-free search left too little precision (see notes/he-privacy.md)
                # a batch filling whole slot groups needs no output mask (batch_params.py)
                got = suggest(graph, N, full_groups=batch % (N // 2) == 0)
            except ParameterError:
                continue
            bits = tuple(int(b) for b in got["coeff_bits"])
            if sum(bits) > MAX_BITS_128[N] or float(got.get("precision_bits", 0.0)) < BATCH_MIN_PRECISION_BITS:
                continue  # (the output mask costs 24 bits: a small ring may be left with too little precision)
            p = HEParams(N=N, coeff_mod_bit_sizes=bits, scale_bits=int(got["scale_bits"]), depth=d,
                         slots=N // 2, packing="batch", input_scale_bits=int(got["scale_bits"]),
                         weight_bits=0, output_scale_bits=0, value_bits=vb, batch=batch,
                         notes={})
            p.validate()
            return p
    for N in RING_DEGREES:
        if N < min_N or N // 2 < batch:
            continue
        for t in range(max(max_t, 40), min_t - 1, -1):
            q0 = min(MAX_DATA_PRIME_BITS, t + vb + 2)
            if q0 < t + 4 or t < _min_prime_bits(N):
                continue
            bits = _with_special([q0] + [t] * d)
            if sum(bits) <= MAX_BITS_128[N]:
                p = HEParams(N=N, coeff_mod_bit_sizes=tuple(bits), scale_bits=t, depth=d, slots=N // 2,
                             packing="batch", input_scale_bits=t, weight_bits=t, output_scale_bits=t,
                             value_bits=vb, batch=batch)
                p.validate()
                return p
    maxd = (MAX_BITS_128[RING_DEGREES[-1]] - 2 * (min_t + vb + 1)) // min_t
    raise ParameterError(f"network too deep for batch-packed HE at 128-bit security: it needs depth {d} but the "
                         f"largest parameters (N={RING_DEGREES[-1]}, {MAX_BITS_128[RING_DEGREES[-1]]} bits, scale "
                         f"2^{min_t}) allow at most depth {maxd}")

