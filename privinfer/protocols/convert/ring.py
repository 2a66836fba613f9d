"""Inside the CrypTen party: additive shares mod t <-> CrypTen's shares in Z_2^64 (one comparison each way).

Why here and not in `ss`: these two steps exist only to join a BFV segment (`convert/bfv.py`); they use
CrypTen tensors only (no HE), and keep the ss package free of anything mod t.

lift (HE -> shares): the client holds a, the server b, both in [0, t), a + b = y + h (mod t), h = (t - 1)/2,
    y + h in [0, t). So y = a + b - h - t w with w = [a + b >= t]: one secure comparison (CrypTen's `_ltz` on
    a + b - t, exact: A2B and the sign bit; no truncation is involved). The result must be y / D on CrypTen's
    2^16 grid (D = 2^w, the segment's weight scale): each party divides its OWN integer locally
    (A' = round(a / D), B' = round((b - h) / D)) and the public T' = round(t / D) multiplies the shared bit,
    so y / D = A' + B' - T' + T' [a + b < t] up to 1.5 units of 2^-16, deterministically. CrypTen's
    probabilistic local truncation (which fails with probability ~|x| / 2^63 per element) is never used.
lift_relu (HE -> shares, then a ReLU: every BFV segment of GAZELLE's split is followed by one): ReLU(y) / D in
    ONE batched comparison instead of two in sequence. With s = a + b in [0, 2t): y + h = s mod t, so
    [y < 0] = [s < h] + [s < t + h] - [s < t] (the three thresholds compared side by side, one `_ltz` on a
    stacked tensor: the rounds of one comparison), w = 1 - [s < t] as in `lift`, and ReLU(y) / D =
    (y / D) * (1 - [y < 0]): one product with a 0/1 share (scale 1, so no truncation).
relu_reduce_reveal (a ReLU, then shares -> HE: every ss segment of GAZELLE's split ends so): the opening of
    (ReLU(X) + h + r) mod t in ONE batched comparison instead of two in sequence: [X < 0] and [S >= t] side by
    side (S = X + h + r), Z_X = S - t [S >= t], Z_0 = (h + r) mod t (the server's own), and
    Z = Z_0 + [X >= 0] (Z_X - Z_0): one product of two integer shares (scale 1, no truncation).
lift_relu_reduce_reveal (a segment that is one ReLU between two BFV segments, GAZELLE's layer 8): all three in
    ONE batched comparison of five thresholds: [s < h], [s < t], [s < t + h] (sign and wrap bit of y) and the
    next modulus t2's wrap bit of both candidates c_w = y / D for w = 0, 1 (`lift`'s A' + B' - T' w). The
    three cases are indicator bits linear in those: y < 0 -> (h2 + r) mod t2 (the server's own), h <= s < t ->
    (c_0 + h2 + r) mod t2, s >= t + h -> (c_1 + h2 + r) mod t2: one round of three products, summed, opened.
pool_relu_reduce_reveal (MaxPool, ReLU, then shares -> HE: GAZELLE's layers 1-2 and 4-5, run as MaxPool, ReLU):
    the pool's tournament down to two halves m1, m2 (`ss.lowering`), then its last comparison, both signs and
    both candidates' wrap bits in ONE batched comparison: p1 = [m1 >= m2][m1 >= 0], p2 = [m1 < m2][m2 >= 0]
    (one round of products), Z = Z_0 + p1 (Z_1 - Z_0) + p2 (Z_2 - Z_0) (another): one comparison fewer in
    sequence than the tournament's last level followed by `relu_reduce_reveal`.
reduce_reveal (shares -> HE): S = X + h + r (X the ring value, |X| <= h; r the server's mask in [0, t)) lies
    in [0, 2t); Z = S - t [S >= t] = (x + h + r) mod t: one comparison, then Z is opened to the client only.
"""
from __future__ import annotations

import numpy as np


def _ltz(share):
    """An arithmetic share of [value < 0] (scale 1) of the integer whose local share is `share`."""
    from crypten.mpc import MPCTensor
    return MPCTensor.from_shares(share.clone(), precision=0)._ltz().share


def lift(rank: int, local: np.ndarray, t: int, D: int, bits: int):
    """CrypTen MPCTensor (scale 2^bits) of y / D from shares a (client, rank 1) and b (server, rank 0) mod t."""
    import torch
    from crypten.mpc import MPCTensor
    t, D = int(t), int(D)
    h = (t - 1) // 2
    a = torch.as_tensor(np.asarray(local), dtype=torch.int64)
    lt = _ltz(a - t if rank == 0 else a)  # [a + b < t]
    T = int(round(t / D))
    if rank == 0:
        base = torch.round((a.double() - h) / D).long() - T
    else:
        base = torch.round(a.double() / D).long()
    return MPCTensor.from_shares(base + T * lt, precision=bits)


def lift_relu(rank: int, local: np.ndarray, t: int, D: int, bits: int):
    """CrypTen MPCTensor (scale 2^bits) of ReLU(y) / D from shares a, b mod t (see the module docstring)."""
    import torch
    from crypten.mpc import MPCTensor
    t, D = int(t), int(D)
    h = (t - 1) // 2
    a = torch.as_tensor(np.asarray(local), dtype=torch.int64)
    lt = _ltz(torch.stack([a - c if rank == 0 else a for c in (h, t, t + h)]))  # [s < h], [s < t], [s < t + h]
    T = int(round(t / D))
    base = torch.round((a.double() - h) / D).long() - T if rank == 0 else torch.round(a.double() / D).long()
    y = MPCTensor.from_shares(base + T * lt[1], precision=bits)
    keep = -(lt[0] + lt[2] - lt[1])  # shares of 1 - [y < 0]: rank 0 adds the public 1
    if rank == 0:
        keep = keep + 1
    return y * MPCTensor.from_shares(keep, precision=0)


def reduce_reveal(rank: int, x, r: np.ndarray | None, t: int):
    """Open (X + h + r) mod t to the client (rank 1; None elsewhere), X = the ring value of MPCTensor x."""
    import torch
    from crypten.mpc import MPCTensor
    t = int(t)
    h = (t - 1) // 2
    s = x.share.clone()
    if rank == 0:
        s = s + torch.as_tensor(np.asarray(r), dtype=torch.int64).reshape(s.shape) + (h - t)
    lt = _ltz(s)  # [S < t]
    z = MPCTensor.from_shares(s + t * lt, precision=0)
    return z._tensor.reveal(dst=1)


def relu_reduce_reveal(rank: int, x, r: np.ndarray | None, t: int):
    """Open (ReLU(X) + h + r) mod t to the client (rank 1; None elsewhere), X = the ring value of x."""
    import torch
    from crypten.mpc import MPCTensor
    t = int(t)
    h = (t - 1) // 2
    s = x.share.clone()
    R = torch.as_tensor(np.asarray(r), dtype=torch.int64).reshape(s.shape) if rank == 0 else None
    st = s + R + (h - t) if rank == 0 else s.clone()  # shares of S - t
    lt = _ltz(torch.stack([s, st]))  # [X < 0], [S < t]
    zx = st + t * lt[1]  # shares of S mod t
    z0 = torch.remainder(R + h, t) if rank == 0 else torch.zeros_like(s)
    keep = 1 - lt[0] if rank == 0 else -lt[0]  # shares of [X >= 0]
    z = MPCTensor.from_shares(keep, precision=0) * MPCTensor.from_shares(zx - z0, precision=0)
    out = z.share + z0
    return MPCTensor.from_shares(out, precision=0)._tensor.reveal(dst=1)


def lift_relu_reduce_reveal(rank: int, local: np.ndarray, t: int, D: int, r: np.ndarray | None, t2: int):
    """Open (ReLU(y / D) + h2 + r) mod t2 to the client from shares mod t of y (see the module docstring)."""
    import torch
    from crypten.mpc import MPCTensor
    t, D, t2 = int(t), int(D), int(t2)
    h, h2 = (t - 1) // 2, (t2 - 1) // 2
    a = torch.as_tensor(np.asarray(local), dtype=torch.int64)
    T = int(round(t / D))
    base = torch.round((a.double() - h) / D).long() - T if rank == 0 else torch.round(a.double() / D).long()
    cands = [base + (T if rank == 0 else 0), base]  # shares of c_0 (no wrap) and c_1 (wrap)
    if rank == 0:
        R = torch.as_tensor(np.asarray(r), dtype=torch.int64).reshape(a.shape)
        u = [c + R + (h2 - t2) for c in cands]  # shares of c_w + h2 + r - t2
        z0 = torch.remainder(R + h2, t2)
    else:
        u, z0 = cands, torch.zeros_like(a)
    lt = _ltz(torch.stack([a - h if rank == 0 else a, a - t if rank == 0 else a, a - t - h if rank == 0 else a]
                          + u))  # [s < h], [s < t], [s < t + h], [u_0 < 0], [u_1 < 0]
    one = 1 if rank == 0 else 0
    bits = torch.stack([lt[0] + lt[2] - lt[1], lt[1] - lt[0], one - lt[2]])  # y < 0 | no wrap, y >= 0 | wrap, y >= 0
    vals = torch.stack([z0, u[0] + t2 * lt[3], u[1] + t2 * lt[4]])
    z = (MPCTensor.from_shares(bits, precision=0) * MPCTensor.from_shares(vals, precision=0)).share.sum(0)
    return MPCTensor.from_shares(z, precision=0)._tensor.reveal(dst=1)


def pool_relu_reduce_reveal(rank: int, x, kernel, stride, r: np.ndarray | None, t: int):
    """Open (ReLU(MaxPool(X)) + h + r) mod t to the client (rank 1; None elsewhere): see the module docstring.
    The windows must have an even size (the two halves are reduced side by side)."""
    import crypten
    import torch
    from crypten.mpc import MPCTensor
    from ..ss.lowering import _pairwise_max, pool_windows
    t = int(t)
    h = (t - 1) // 2
    w = pool_windows(x, kernel, stride)
    k = w.size(-1)
    m = _pairwise_max(crypten.stack([w[..., :k // 2], w[..., k // 2:]]))  # both halves' maxima, side by side
    s1, s2 = m.share[0], m.share[1]
    if rank == 0:
        R = torch.as_tensor(np.asarray(r), dtype=torch.int64).reshape(s1.shape)
        u1, u2, z0 = s1 + R + (h - t), s2 + R + (h - t), torch.remainder(R + h, t)
    else:
        u1, u2, z0 = s1, s2, torch.zeros_like(s1)
    lt = _ltz(torch.stack([s1 - s2, s1, s2, u1, u2]))  # [m1 < m2], [m1 < 0], [m2 < 0], [S1 < t], [S2 < t]
    one = 1 if rank == 0 else 0
    p = MPCTensor.from_shares(torch.stack([one - lt[0], lt[0]]), precision=0) * \
        MPCTensor.from_shares(torch.stack([one - lt[1], one - lt[2]]), precision=0)
    vals = torch.stack([u1 + t * lt[3] - z0, u2 + t * lt[4] - z0])
    z = (MPCTensor.from_shares(p.share, precision=0) * MPCTensor.from_shares(vals, precision=0)).share.sum(0) + z0
    return MPCTensor.from_shares(z, precision=0)._tensor.reveal(dst=1)
