"""HE side of the perfect-hiding conversions: BFV ciphertexts <-> additive shares mod t (GAZELLE).

HE -> shares (server holds ct(y), |y| <= h = (t - 1) / 2 by the segment's sound bound):
    the server adds m, uniform mod t in EVERY slot (both rows; output or not), re-randomizes, floods and
    switches the ciphertext down (`BFVContext.finish`), and sends it. The client decrypts
    a = (y + m) mod t at the output slots; the server keeps b = (h - m) mod t, so a + b = y + h (mod t) with
    y + h in [0, t). The client's view, every slot of a fresh-looking ciphertext, is uniform mod t whatever y
    (and so the weights) are: perfect hiding. `ring.lift` then makes CrypTen shares of y inside the 2PC.
shares -> HE (the 2PC holds shares of x):
    the server inputs r, uniform mod t; the 2PC reveals z = (x + h + r) mod t to the client only
    (`ring.reduce_reveal`, one secure comparison); the client encrypts z in the segment's input layout; the
    server subtracts the same gather of (h + r) mod t as a plaintext, leaving ct(x) (mod t). z is uniform mod
    t whatever x is: perfect.
Plaintext at the client -> HE: the client encodes round(x 2^16) mod t. HE -> the client's logits (the plan's
last segment): every slot gets a uniform mask, except that the lanes of each output (`he/bfv_pack.py`: an output
may be the sum of L slots of partial sums) get masks summing to zero (L = 1: no mask there), then `finish`.
"""
from __future__ import annotations

import numpy as np

from ...errors import ProtocolError, ShapeError
from ..he.bfv import FRAC_BITS, BFVContext, uniform_mod
from ..he.latency import client_vectors


def half(t: int) -> int:
    return (int(t) - 1) // 2


def encode_input(x: np.ndarray, t: int) -> np.ndarray:
    """The client's own plaintext as slot integers: round(x 2^FRAC_BITS) mod t (flat)."""
    return np.mod(np.rint(np.asarray(x, dtype=np.float64).reshape(-1) * 2.0 ** FRAC_BITS).astype(np.int64), int(t))


def upload(ctx: BFVContext, plan, z: np.ndarray) -> list[bytes]:
    """Client: encrypt z (integers mod t, one image, flat) in the segment's input layout."""
    return list(upload_iter(ctx, plan, z))


def upload_iter(ctx: BFVContext, plan, z: np.ndarray):
    """`upload`, one ciphertext at a time (the client sends each as soon as it is made)."""
    for v in client_vectors(plan, np.asarray(z, dtype=np.float64)):
        yield ctx.encrypt(v)


def input_mask(t: int, n: int) -> np.ndarray:
    """Server: r, uniform mod t, for the shares -> HE conversion of n values."""
    return uniform_mod(t, n)


def unmask_plaintexts(ctx: BFVContext, plan, r: np.ndarray) -> list:
    """Server: the plaintexts gather((h + r) mod t) per input ciphertext (None where all zero), which
    `unmask_input` subtracts; input-independent given r, so they may be made while the 2PC runs."""
    R = np.mod(np.asarray(r, dtype=np.int64).reshape(-1) + half(ctx.t), ctx.t).astype(np.float64)
    return [ctx.encode(v) if np.any(v) else None for v in client_vectors(plan, R)]


def unmask_input(ctx: BFVContext, plan, cts: list, r: np.ndarray | None = None, pts: list | None = None) -> list:
    """Server: ct(x + h + r) - gather((h + r) mod t) = ct(x) (mod t), in place (`pts`: made before)."""
    pts = unmask_plaintexts(ctx, plan, r) if pts is None else pts
    if len(pts) != len(cts):
        raise ShapeError(f"{len(pts)} unmasking plaintexts for {len(cts)} input ciphertexts")
    for ct, pt in zip(cts, pts):
        if pt is not None:
            ctx.evaluator.sub_plain_inplace(ct, pt)
    return cts


def output_pads(ctx: BFVContext, seg, last: bool) -> tuple[list, np.ndarray]:
    """Server: the input-independent part of one image's hand-over out of `seg` (a `BFVSegment`), which it may
    make before the result exists (while the client encrypts, or while the 2PC runs): per result ciphertext
    its mask (uniform mod t in every slot; for the last segment `final_masks`) and a pad, a fresh encryption
    of zero plus the flood (`BFVContext.pad`) with the mask added as a plaintext. Each pad and mask serves one
    ciphertext of one image, once."""
    n = seg.n_out_ct
    masks = (final_masks(ctx.t, ctx.N, seg.positions, n) if last
             else np.stack([uniform_mod(ctx.t, ctx.N) for _ in range(n)]))
    pads = []
    for m in masks:
        pad = ctx.pad(seg.noise_bits)
        ctx.evaluator.add_plain_inplace(pad, ctx.encode(m))
        pads.append(pad)
    return pads, masks


def _finish_all(ctx: BFVContext, seg, outs: list, pads) -> list[bytes]:
    cts, _ = pads
    if len(cts) != len(outs):
        raise ShapeError(f"{len(cts)} pads for {len(outs)} result ciphertexts")
    return [ctx.ct_to_bytes(ctx.finish(ct, seg.noise_bits, seg.out_level, pad)) for ct, pad in zip(outs, cts)]


def mask_to_shares(ctx: BFVContext, seg, outs: list, pads=None) -> tuple[list[bytes], np.ndarray]:
    """Server: mask every slot of every result ciphertext, finish them; (blobs, own share b at the outputs).
    An output held in L lanes of partial sums is the sum of its lanes: so is each share (mod t).
    `pads`: this image's `output_pads(ctx, seg, last=False)`, made before (else made here)."""
    pads = output_pads(ctx, seg, last=False) if pads is None else pads
    blobs = _finish_all(ctx, seg, outs, pads)
    ci, si = seg.positions
    m_out = pads[1][ci, si].sum(axis=1) % ctx.t
    return blobs, np.mod(half(ctx.t) - m_out, ctx.t)


def final_masks(t: int, N: int, positions, n_ct: int) -> np.ndarray:
    """(n_ct, N) masks for a result the client may read: uniform mod t in every slot, except that the L lanes
    of each output sum to 0 mod t (L = 1: the output's slot is unmasked). The client's view of the lanes is
    then uniform subject to their sum being the output: it learns the output, not the partial sums."""
    ci, si = positions
    m = uniform_mod(t, n_ct * N).reshape(n_ct, N)
    rest = m[ci[:, 1:], si[:, 1:]].sum(axis=1) % t if ci.shape[1] > 1 else 0
    m[ci[:, 0], si[:, 0]] = np.mod(-rest, t)
    return m


def reveal_final(ctx: BFVContext, seg, outs: list, pads=None) -> list[bytes]:
    """Server, last segment: masks that hide everything but each output (`final_masks`), then finish.
    `pads`: this image's `output_pads(ctx, seg, last=True)`, made before (else made here)."""
    return _finish_all(ctx, seg, outs, output_pads(ctx, seg, last=True) if pads is None else pads)


def _at_outputs(ctx: BFVContext, blobs: list[bytes], positions, n_ct: int) -> np.ndarray:
    if len(blobs) != n_ct:
        raise ProtocolError(f"expected {n_ct} result ciphertexts, got {len(blobs)}")
    ci, si = positions
    dec = np.stack([ctx.decrypt(b, "masked intermediate") for b in blobs])
    return dec[ci, si].sum(axis=1) % ctx.t


def client_share(ctx: BFVContext, blobs: list[bytes], positions, n_ct: int) -> np.ndarray:
    """Client: its share a = (y + m) mod t at the output positions (the sum of each output's lanes)."""
    return _at_outputs(ctx, blobs, positions, n_ct)


def client_result(ctx: BFVContext, blobs: list[bytes], positions, n_ct: int, scale_bits: int) -> np.ndarray:
    """Client, last segment: y = centered(decryption) / 2^(FRAC_BITS + w)."""
    y = ctx.centered(_at_outputs(ctx, blobs, positions, n_ct))
    return y.astype(np.float64) / 2.0 ** scale_bits


def check_share(a: np.ndarray, t: int, n: int) -> np.ndarray:
    a = np.asarray(a)
    if a.size != n:
        raise ShapeError(f"share of {a.size} values, expected {n}")
    if np.any(a < 0) or np.any(a >= t) or np.any(a != np.rint(a)):
        raise ProtocolError("a share mod t must hold integers in [0, t)")
    return a.astype(np.int64).reshape(-1)
