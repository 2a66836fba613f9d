"""Conversions between a ciphertext under the client's key and additive shares (client, server).

Why one package: it is the only place that touches both a ciphertext and a share, so the hiding of every
hand-over is decided (and reported) here, and `protocols/he` and the ss modules never import each other.

    convert/__init__.py  CKKS <-> float shares: statistical masks, 19-20 bits (this module, below)
    convert/bfv.py       BFV <-> shares mod t: masks uniform mod t, perfect hiding (GAZELLE's conversion)
    convert/ring.py      inside the CrypTen party: mod-t shares <-> CrypTen's Z_2^64 shares, one secure
                         comparison each way

CKKS conversions (segments with x² stay on CKKS; linear-only segments use BFV, see `hybrid/bfv_seg.py`):

HE -> shares (server holds ct(y), y in the output slots):
    the server adds a mask m, uniform in [-M, M] for the real and the imaginary part of EVERY slot (so the
    non-output slots and the evaluation error are masked too), re-randomizes the ciphertext with a fresh
    public-key encryption of zero and sends it; the client decrypts y + m (its share), the server keeps -m.
    The bound M is as large as the output level's modulus allows: the decryption must hold Δ·|y + m| + |e|
    below q_L / 2, so M = 2^(log2 q_L - 1 - MARGIN - log2 Δ). Statistical distance between the client's
    views for two y, y' with |y|, |y'| < 2^vb is at most 2^vb / M, i.e. hiding = log2 M - vb bits.

    Why not 40 bits: the output level keeps one prime (SEAL primes have at most 60 bits) and the scale must stay
    >= 2^28 for logits within 1e-2 (at 2^22 cryptonets-mnist drifts by 2e-2), so M <= 2^(60 - 2 - 28) = 2^30:
    19-20 bits against |y| < 2^10. A masked segment pays for that in its parameters (`hybrid/he_seg.py` asks
    `select_params` for value_bits = 10 + hiding, from 40 bits down, until one fits; 20 does). 40 bits need
    log2 q_L >= 28 + 10 + 40 + 2 = 80: two primes kept at the output level, which the chain builder does not
    do (with `he`'s own 0/1 output mask in q0 the result sits at scale 2^48 and M is only 2^9). The
    alternative with perfect hiding is GAZELLE's: BFV with a mask uniform mod t, then a secure comparison to
    lift mod-t shares to Z_2^64 (`convert/bfv.py`, `convert/ring.py`): used for every linear-only HE segment;
    `privacy()` states the hiding of every conversion.

shares -> HE (the 2PC holds shares of x):
    the server (rank 0) inputs a fresh mask r, uniform on the 2^-16 fixed-point grid in [-2^R, 2^R]; the 2PC
    reveals z = x + r to the client only; the client encrypts z in the HE segment's input layout; the server
    subtracts the same gather of r as a plaintext (`client_vectors` is linear), leaving ct(x). Hiding:
    R - vb bits (R = 30 unless the level-0 modulus allows less: float64 keeps |z|·2^-52 = 2^-22; at R = 36 the
    2^-16 input error grows through x² and FC layers to 2e-2 in cryptonets-mnist logits).
"""
from __future__ import annotations

import math

import numpy as np

from ...privacy.mechanisms import NoiseSource
from ..he import rerandomize
from ..he.bfv import uniform_mod
from ..he.latency import LatencyPlan, client_vectors

MARGIN_BITS = 1          # headroom for |e| and rounding inside q_L / 2
FIXED_BITS = 16          # CrypTen's fractional bits: r lies on this grid so both sides agree exactly
SHARE_MASK_BITS = 30     # R: the shares -> HE mask (float64 keeps |z|·2^-52 = 2^-22), before the modulus caps it
DEFAULT_VALUE_BITS = 10  # |values| < 2^10: the bound the HE parameter selection assumes


class _OSRandom:
    """Mask draws from the OS CSPRNG: a statistical PRNG (numpy's PCG64) could have its state recovered from
    enough of its outputs, and then every later mask with it. `uniform` and `integers` as numpy's."""

    def uniform(self, lo: float, hi: float, n: int) -> np.ndarray:
        return lo + (hi - lo) * NoiseSource().uniform(int(n))

    def integers(self, lo: int, hi: int, size, endpoint: bool = False) -> np.ndarray:
        n = int(np.prod(size))
        return int(lo) + uniform_mod(int(hi) - int(lo) + (1 if endpoint else 0), n).reshape(size)


def fresh_rng() -> _OSRandom:
    return _OSRandom()


def level_modulus_bits(ctx, parms_id) -> float:
    """log2 of the coefficient modulus at the ciphertext's level."""
    mods = ctx.seal.get_context_data(parms_id).parms().coeff_modulus()
    return float(sum(math.log2(m.value()) for m in mods))


def he_mask_bound(ctx, ct) -> float:
    """M: the largest mask |m| the ciphertext's level can carry at its scale (see the module docstring)."""
    bits = level_modulus_bits(ctx, ct.parms_id()) - 1 - MARGIN_BITS - math.log2(ct.scale)
    return 2.0 ** math.floor(bits)


def he_to_shares_server(ctx, ct, out_slots: np.ndarray, rng: np.random.Generator | None = None):
    """Mask every slot of `ct` in place and re-randomize it; returns (ct, server share -m at out_slots, M)."""
    rng = rng or fresh_rng()
    M = he_mask_bound(ctx, ct)
    m = rng.uniform(-M, M, ctx.slots) + 1j * rng.uniform(-M, M, ctx.slots)
    level = ctx.parms_ids.index(ct.parms_id())
    ctx.evaluator.add_plain_inplace(ct, ctx.encode(m, ct.scale, level))
    rerandomize(ctx, ct, 0.0, rng)
    return ct, -m.real[out_slots], M


def he_to_shares_client(ctx, blob: bytes, out_slots: np.ndarray) -> np.ndarray:
    """The client's share y + m: the decryption at the output slots."""
    return ctx.decrypt(blob, "masked intermediate")[out_slots]


def share_mask_bits(ctx, input_scale_bits: int) -> int:
    """R for a shares -> HE conversion into this context: |x + r| · 2^input_scale must stay below Q_0 / 2."""
    cap = level_modulus_bits(ctx, ctx.parms_ids[0]) - 1 - MARGIN_BITS - input_scale_bits - 1
    return int(max(0, min(SHARE_MASK_BITS, math.floor(cap))))


def share_mask(shape, bits: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """r uniform on the 2^-FIXED_BITS grid in [-2^bits, 2^bits] (exact in float64 for bits <= 36)."""
    rng = rng or fresh_rng()
    hi = 1 << (bits + FIXED_BITS)
    return rng.integers(-hi, hi, size=shape, endpoint=True).astype(np.float64) / float(1 << FIXED_BITS)


def shares_to_he_client(ctx, plan: LatencyPlan, z: np.ndarray, scale: float) -> list[bytes]:
    """The client encrypts z = x + r (one image) in the segment's input layout."""
    return [ctx.encrypt(v, scale) for v in client_vectors(plan, z)]


def shares_to_he_server(ctx, plan: LatencyPlan, cts: list, r: np.ndarray) -> list:
    """Subtract the gathered mask from the client's ciphertexts (in place): ct(x + r) - gather(r) = ct(x)."""
    for ct, v in zip(cts, client_vectors(plan, r)):
        if np.any(v):
            ctx.evaluator.sub_plain_inplace(ct, ctx.encode(v, ct.scale, ctx.parms_ids.index(ct.parms_id())))
    return cts


def hiding_bits(mask_bound: float, value_bits: int = DEFAULT_VALUE_BITS) -> float:
    """Statistical hiding of a uniform mask in [-M, M] over values |y| < 2^value_bits: log2 M - value_bits."""
    return round(max(0.0, math.log2(mask_bound) - value_bits), 1)
