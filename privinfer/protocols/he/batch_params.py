"""CKKS parameters for the CryptoNets batch engine (`batch.py`): which coefficient-modulus chain and input scale.

Why its own module: the chain decides nearly all of the batch path's cost (ring dimension N: every
ciphertext, every product and every byte on the wire scales with it; the number of primes: every linear
layer's integer products and every SEAL call scale with it), and choosing it needs the engine's planner
(`batch_plan.plan_scales`), run over a few candidate chains. `params.select_params(packing="batch")` asks
`suggest_params` here, ring by ring from the smallest.

The output mask. A query whose last slot group is partial gets its unused slots multiplied by a 0/1
plaintext of 2^MASK_BITS (`batch.server_evaluate(mask_unused=True)`), which costs that many bits of the
chain. A query that fills every group needs no mask (every slot holds one of the client's images). So for
a batch size that is a multiple of the slots (`full_groups=True`: e.g. 4096 images at N=8192) the chain is
chosen for the unmasked plan -- and must still leave a masked plan of >= MIN_MASKED_BITS of weight
precision, for a smaller last query of the session (the server refuses a plan below
`batch.MIN_PRECISION_BITS`). Without this, the 24 mask bits pushed cryptonets-mnist at batch 4096 from
N=8192 to N=16384 (twice the slots, half of them empty: 4x the server's work, 2x the upload).

Soundness is unchanged by the choice: every plan keeps the interval (or calibrated) value bounds of
`batch_plan` below the modulus, whatever the chain.
"""
from __future__ import annotations

import threading
import weakref

from ...errors import ParameterError
from ...model.ir import Graph
from . import batch_plan as bp
from .batch_rns import seal, ts

MASK_BITS = 24.0  # scale of the 0/1 mask plaintext when mask_unused=True
ENOUGH_BITS = 16  # suggest_params: beyond this precision, prefer the cheaper parameters
MIN_PRECISION_BITS = 8  # server_evaluate refuses a plan below this (its logits would be noise)
MIN_MASKED_BITS = MIN_PRECISION_BITS + 2  # full_groups chains: a partial last query must still get this

_suggest_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_prime_cache: dict = {}


def depth(graph: Graph) -> int:
    """Rescale primes this engine wants beyond the last one: one per product level of each Poly layer
    plus one for the outputs (linear layers take none: their weights are integers)."""
    stages = bp.normalize(graph)
    return 1 + sum(st.degree - 1 for st in stages if st.kind == "poly")


def suggest_params(graph: Graph, n: int = 8192, input_bound: float = 1.0, full_groups: bool = False) -> dict:
    """A coefficient-modulus chain and input scale that fit `graph` within 128-bit security at N=n.

    Tries a few chains of `depth(graph)` rescale primes, or one fewer (even, or with a small prime dropped
    first, just before the first square where its bits count four times), first/special primes of 50-60 bits, and
    input scales 2^20..2^31, each planned with room for the `mask_unused` mask -- or, with `full_groups`,
    without it but keeping a masked plan of >= MIN_MASKED_BITS (module docstring); keeps the cheapest plan
    reaching ENOUGH_BITS of precision (else the most precise). Returns {"coeff_bits": [...], "scale_bits":
    int, "precision_bits": float}. Cached per graph.
    """
    max_bits = {4096: 109, 8192: 218, 16384: 438, 32768: 881}.get(int(n))
    if max_bits is None:
        raise ParameterError(f"unsupported ring dimension {n}")
    key = (int(n), float(input_bound), bool(full_groups))
    with _lock:
        cached = _suggest_cache.setdefault(graph, {}).get(key)
    if cached is not None:
        return dict(cached)
    stages = bp.normalize(graph)
    bp.set_bounds(stages, input_bound)
    d = depth(graph)
    mask = 0.0 if full_groups else MASK_BITS
    screened = []
    for first in (60, 50):
        for sp in (60, 40):
            mid_total = max_bits - first - sp
            if mid_total < 20 * d:
                continue
            # d rescale primes, or d - 1 larger ones (a square need not be preceded by a rescale: with
            # cryptonets-mnist the first one is not, and 3 primes of 59 bits beat 4 of 39: 25% less of
            # everything that scales with the input's primes -- encryption, upload, loading, linear layers)
            for shape in [sh for dd in sorted({max(1, d - 1), d}) for sh in _mid_shapes(dd, mid_total)]:
                bits = [first, *shape, sp]
                try:
                    primes = primes_of(n, bits)
                except Exception:
                    continue
                for a in (20, 22, 25, 28, 31) if full_groups else (25, 28, 31):
                    try:
                        plan = bp.plan_scales(stages, primes, len(primes), a, n, mask, cost_pass=False)
                        if full_groups and bp.plan_scales(stages, primes, len(primes), a, n, MASK_BITS,
                                                          cost_pass=False).precision_bits < MIN_MASKED_BITS:
                            continue
                    except ParameterError:
                        continue
                    # fresh-encryption noise is ~2^8 at the input: a bits of scale give ~a-8 bits there
                    screened.append((min(plan.precision_bits, a - 8.0), bits, primes, a))
    if not screened:
        raise ParameterError(f"no parameter set at N={n} fits this network; try a larger N")
    top = max(min(round(p), ENOUGH_BITS) for p, *_ in screened)
    best = None
    for _, bits, primes, a in screened:
        plan = bp.plan_scales(stages, primes, len(primes), a, n, mask)
        prec = min(plan.precision_bits, a - 8.0)
        if min(round(prec), ENOUGH_BITS) < top:
            continue
        score = (-plan.est_cost, prec, -sum(bits))
        if best is None or score > best[0]:
            best = (score, bits, a, prec)
    if best is None:  # pragma: no cover - the screening found a plan with this precision
        raise ParameterError(f"no parameter set at N={n} fits this network")
    res = {"coeff_bits": best[1], "scale_bits": best[2], "precision_bits": best[3]}
    with _lock:
        _suggest_cache.setdefault(graph, {})[key] = dict(res)
    return res


def _mid_shapes(d: int, total: int) -> list[list[int]]:
    """Candidate bit sizes of the d rescale primes, in chain order (the last one is dropped first)."""
    cap = lambda v: int(max(20, min(60, v)))  # noqa: E731
    shapes = [[cap(total // d)] * d]
    if d >= 2:
        for small in (20, 24, 28):
            shapes.append([cap((total - small) // (d - 1))] * (d - 1) + [small])
    out = []
    for sh in shapes:
        if sh not in out and sum(sh) <= total:
            out.append(sh)
    return out


def primes_of(n: int, bits: list[int]) -> list[int]:
    """SEAL's NTT primes for these bit sizes, the special (last) one excluded."""
    key = (n, tuple(bits))
    if key not in _prime_cache:
        ps = seal.CoeffModulus.Create(n, list(bits))
        _prime_cache[key] = [int(m.value()) for m in ps][:-1]
    return _prime_cache[key]


def make_context(n: int = 8192, coeff_bits: list[int] | None = None, scale_bits: int | None = None,
                 graph: Graph | None = None):
    """A CKKS context with secret, public and relinearization keys (no Galois keys).

    Without `coeff_bits`, uses `suggest_params(graph, n)` (a graph is then required).
    """
    if coeff_bits is None:
        if graph is None:
            raise ParameterError("make_context needs coeff_bits or a graph")
        p = suggest_params(graph, n)
        coeff_bits, scale_bits = p["coeff_bits"], scale_bits or p["scale_bits"]
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=int(n), coeff_mod_bit_sizes=list(coeff_bits))
    ctx.global_scale = 2.0 ** (scale_bits if scale_bits is not None else 25)
    return ctx


def public_copy(context):
    """A copy of `context` without the secret key (what the server gets)."""
    pub = context.copy()
    pub.make_context_public()
    return pub
