"""Channel packing for convolutional networks: a value spread over several ciphertexts, channels in slot blocks.

Why: the one-ciphertext latency packing (`latency.py`) needs every intermediate vector in one ciphertext, so
a convolution with 16 output maps of 24x24 (9216 values) forces N=32768, and its client-side gather uploads
one ciphertext per group of kernel taps. GAZELLE / LoLa / Orion instead keep a convolution's *geometry* in
the slots; this module does that, with the shift structure found automatically from the public sparsity
pattern:

Grid layouts
    A (C, H, W) tensor is split into polyphase components (y % ph, x % pw); each (phase, channel) "unit"
    owns a block of Bk (a power of two) slots, element (c, y, x) at offset (y // ph) * ry + (x // pw) * rx.
    Phase-major: phase p, channel c -> ciphertext p * cpp + c // nb, block c % nb (nb = slots / Bk).
    Packed (the client's input only): every unit in one ciphertext, replicated to fill it.
    Doubled (`dup=2`, LoLa-style): every channel twice per ciphertext, the second copy rotated by half the
    channels (block b: channel b; block C2 + b: channel (b + C2/2) % C2): a later convolution then sums each
    output from two slots half the ring apart (`RotStep.fold`), each reading half of the channel differences
    with the same shifts: half the giants and half the plaintexts of the plain layout.

Rotation steps (`RotStep`): `out[o] = sum_{c, j} rot(x[c], j) * d[o, c, j]`
    Every structural weight (R, k) becomes one term: the output slot (o, s) of R, the input slot (c, t) of
    k (the nearest copy if the input is replicated), j = t - s (signed). Output slots that hold no output
    get weight 0, so the result is exactly the layout (zeros elsewhere, no garbage). j = g * n1 + b is
    evaluated baby-step giant-step: babies rot(x[c], b) once per input ciphertext (each one rotation from a
    smaller baby, keys = powers of two), giants by Horner's rule (keys n1 and -n1); plaintexts pre-rotated.
    With the right layout a convolution needs few distinct j: output geometry ry_o = stride * p_o * ry / ph
    keeps t - s constant over the output grid, so j = (channel block shift) + (kernel offset).

AvgPool folding (`merge`)
    When the segment starts with AvgPool(k, stride k) and the input's phases are (k, k), the pool is the sum
    of the k² phase ciphertexts (additions only); the segment's matrix on the pooled tensor is k² times its
    columns of phase (0, 0). The planner asks the previous segment for output phases k for this reason, and
    the client lays the image out with phases stride * k.

The planner (`convpack_plan.plan_multi`) goes segment by segment with these rules, hands over to the
one-ciphertext diagonal method of `latency.py` (or a compact `RotStep`, whichever is cheaper) once the value
fits one ciphertext and the segment is dense, and ends on a `RotStep` that writes each result once (the output
mask then folds into its plaintexts: `convpack_plan.clean_output`). Levels and scales are exactly those of a
`latency.py` segment (one rescale per segment), so the parameter selection is unchanged. Partner slots of a
fold hold partial sums (GARBAGE in the layout, never read).

This module is the layout and the terms (public: client, server and planner derive the same); evaluating a
step with the weights, on the server, is `convpack_eval.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ShapeError
from .latency_plan import C_MUL, C_ROT, GARBAGE, ZERO, Layout, _baby_order, next_pow2

#: ms-equivalent charged per Galois key (set-up time and bytes; keys, not compute, bind the set-up budget)
C_KEY = 6.0


@dataclass(frozen=True)
class Grid:
    """Where a (C, H, W) tensor sits in the slots (see the module docstring)."""
    C: int
    H: int
    W: int
    ph: int
    pw: int
    ry: int
    rx: int
    Bk: int
    packed: bool = False
    #: 2: every channel twice per ciphertext (LoLa-style), the second copy rotated by half the channels:
    #: block b < C2 holds channel b, block C2 + b channel (b + C2/2) % C2 (C2 = next_pow2(C), 2 C2 blocks exactly)
    dup: int = 1

    def fits(self, slots: int) -> bool:
        row = ((self.W - 1) // self.pw) * self.rx
        last = ((self.H - 1) // self.ph) * self.ry + row
        if last >= self.Bk or self.Bk > slots or (self.H > self.ph and row >= self.ry) or self.rx < 1:
            return False  # (rows must not overlap)
        if self.dup == 2:
            return not self.packed and self.C > 1 and 2 * next_pow2(self.C) * self.Bk == slots
        return self.dup == 1 and (not self.packed or self.ph * self.pw * self.C <= slots // self.Bk)

    def idx(self, slots: int) -> np.ndarray:
        """(n_ct, slots): the element index each slot holds, ZERO elsewhere."""
        if not self.fits(slots):
            raise ShapeError(f"grid {self} does not fit {slots} slots")
        c, y, x = np.meshgrid(np.arange(self.C), np.arange(self.H), np.arange(self.W), indexing="ij")
        c, y, x = c.ravel(), y.ravel(), x.ravel()
        e = (c * self.H + y) * self.W + x
        phase = (y % self.ph) * self.pw + x % self.pw
        pos = (y // self.ph) * self.ry + (x // self.pw) * self.rx
        nb = slots // self.Bk
        if self.packed:
            period = next_pow2(self.ph * self.pw * self.C)
            out = np.full((1, slots), ZERO, dtype=np.int64)
            unit = phase * self.C + c
            for rep in range(nb // period):
                out[0, (rep * period + unit) * self.Bk + pos] = e
            return out
        if self.dup == 2:
            C2 = next_pow2(self.C)
            out = np.full((self.ph * self.pw, slots), ZERO, dtype=np.int64)
            out[phase, c * self.Bk + pos] = e
            out[phase, (C2 + (c - C2 // 2) % C2) * self.Bk + pos] = e
            return out
        cpp = -(-self.C // nb)
        out = np.full((self.ph * self.pw * cpp, slots), ZERO, dtype=np.int64)
        out[phase * cpp + c // nb, (c % nb) * self.Bk + pos] = e
        return out


@dataclass
class RotStep:
    """One affine segment on multi-ciphertext values (see the module docstring)."""
    merge: int               # input ciphertexts summed in `merge` groups first (AvgPool folding); 1 = none
    n_in: int                # input ciphertexts after the merge
    out_idx: np.ndarray      # (n_out_ct, slots) output element per slot, ZERO elsewhere
    n1: int
    keys: np.ndarray         # (K, 4): o, c, g, b of each plaintext
    term_key: np.ndarray     # weight A[term_R, cols[term_k]] * col_mult at slot term_s of plaintext term_key
    term_s: np.ndarray
    term_R: np.ndarray
    term_k: np.ndarray
    cols: np.ndarray | None = None
    col_mult: float = 1.0
    grid: Grid | None = None
    cost: float = 0.0
    #: rotate-and-add steps after the products (before the rescale): a result may be summed from two slots
    #: (`rot_step(fold=F)`): out[s] = acc[s] + acc[s + F]
    fold: tuple = ()
    kind = "rot"

    @property
    def n_out(self) -> int:
        return int(self.out_idx.shape[0])

    @property
    def out(self) -> Layout:
        if self.n_out != 1:
            raise ShapeError("a multi-ciphertext value has no one-ciphertext layout")
        return Layout(self.out_idx.shape[1], self.out_idx[0].copy()).compressed()

    def babies(self, c: int) -> list[int]:
        return [b for b, _, _ in self.baby_chain(c)]

    def baby_chain(self, c: int) -> list[tuple[int, int, int]]:
        """[(baby, from baby, rotation step)] for input ciphertext c, in evaluation order: with the two keys
        {1, d} when every baby is one such step from another (a kernel's row offsets: d = the row stride),
        else by powers of two (b from b - highbit(b))."""
        cache = self.__dict__.setdefault("_chains", {})
        if c not in cache:
            need = sorted({int(b) for b in self.keys[self.keys[:, 1] == c, 3]} - {0})
            have = set(need) | {0}
            jumps = [b for b in need if b - 1 not in have]
            d = jumps[0] if jumps else 1
            if all(b - 1 in have or b - d in have for b in need):
                cache[c] = [(b, b - 1, 1) if b - 1 in have else (b, b - d, d) for b in need]
            else:
                cache[c] = [(b, b - (1 << (b.bit_length() - 1)), 1 << (b.bit_length() - 1))
                            for b in _baby_order(need)]
        return cache[c]

    def giants(self, o: int) -> tuple[int, int]:
        g = self.keys[self.keys[:, 0] == o, 2]
        return (int(min(g.min(), 0)), int(max(g.max(), 0))) if len(g) else (0, 0)

    def n_rotations(self) -> int:
        n = sum(len(self.babies(c)) for c in range(self.n_in)) + len(self.fold) * self.n_out
        return n + sum(hi - lo for lo, hi in (self.giants(o) for o in range(self.n_out)))

    def key_steps(self, slots: int) -> set[int]:
        steps = {step for c in range(self.n_in) for _, _, step in self.baby_chain(c)} | set(self.fold)
        for o in range(self.n_out):
            lo, hi = self.giants(o)
            if hi > 0:
                steps.add(self.n1)
            if lo < 0:
                steps.add(slots - self.n1)
        return steps

    def digest_bytes(self) -> bytes:
        parts = [self.out_idx, self.keys, self.term_key, self.term_s, self.term_R, self.term_k]
        if self.cols is not None:
            parts.append(self.cols)
        head = f"rot:{self.merge}:{self.n_in}:{self.n1}:{self.col_mult!r}".encode()
        if self.fold:
            head += f":fold{list(self.fold)}".encode()
        return head + b"".join(np.ascontiguousarray(p, dtype=np.int64).tobytes() for p in parts)


def _choose_terms(pattern: np.ndarray, in_idx: np.ndarray, out_idx: np.ndarray, fold: int = 0):
    """Every structural weight (R, k), once per slot that holds output R: output (o, s), input ciphertext c and
    signed shift j (the nearest input copy ahead). With `fold` F the term may instead sit at s + F (summed in
    by the fold afterwards), whichever is nearer: a channel copy rotated by half the channels then serves the
    other half of the channel differences with the same shifts (LoLa-style)."""
    S = in_idx.shape[1]
    n_out, n_el = pattern.shape
    flat_out = out_idx.reshape(-1)
    w = np.flatnonzero(flat_out >= 0)
    cnt = np.bincount(flat_out[w], minlength=n_out)
    if len(cnt) != n_out or (cnt == 0).any():
        raise ShapeError("output layout must hold every output")
    if fold and (cnt != 1).any():
        raise ShapeError("a folded step writes each output once")
    order = np.argsort(flat_out[w], kind="stable")
    pos_sorted = w[order]
    starts_o = np.concatenate([[0], np.cumsum(cnt)[:-1]])
    flat_in = in_idx.reshape(-1)
    wi = np.flatnonzero(flat_in >= 0)
    order = np.argsort(flat_in[wi], kind="stable")
    el_s, pos_s = flat_in[wi][order], wi[order]
    counts = np.bincount(el_s, minlength=n_el)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    R, K = np.nonzero(pattern)
    if len(R) and (counts[K] == 0).any():
        raise ShapeError("input layout lacks an element the segment reads")
    if (cnt > 1).any():  # an output held in several slots: one term per slot
        reps = cnt[R]
        first = np.cumsum(reps) - reps
        R, K = np.repeat(R, reps), np.repeat(K, reps)
        copy = np.arange(len(R)) - np.repeat(first, reps)
    else:
        copy = np.zeros(len(R), dtype=np.int64)
    po = pos_sorted[starts_o[R] + copy]
    o, s0 = po // S, po % S
    if fold:
        taken = np.zeros(out_idx.shape, dtype=bool)
        taken.reshape(-1)[w] = True
        if taken[o, (s0 + fold) % S].any():
            raise ShapeError("fold: an output's partner slot holds another output")
    # of several copies, the nearest one ahead (giants then need only the key n1); ties: the lower ciphertext.
    # Copies sorted by (element, slot, ciphertext): the first one at a slot >= s, else (wrapping) the first
    slot_s, ct_s = pos_s % S, pos_s // S
    order = np.lexsort((ct_s, slot_s, el_s))
    key = el_s[order] * S + slot_s[order]
    pos_s = pos_s[order]
    best = np.full(len(R), np.iinfo(np.int64).max)
    c_sel = np.zeros(len(R), dtype=np.int64)
    j_sel = np.zeros(len(R), dtype=np.int64)
    s_sel = s0.copy()
    for s in ([s0, (s0 + fold) % S] if fold else [s0]):
        i = np.searchsorted(key, K * S + s)
        i = np.where((i < starts[K] + counts[K]), i, starts[K])
        pi = pos_s[i]
        score = (pi % S - s) % S
        j = np.where(score > S // 2, score - S, score)
        better = score < best
        best = np.where(better, score, best)
        c_sel = np.where(better, pi // S, c_sel)
        j_sel = np.where(better, j, j_sel)
        s_sel = np.where(better, s, s_sel)
    return R, K, o, s_sel, c_sel, j_sel


def _bsgs_cost(o, c, j, n1):
    g = np.floor_divide(j, n1)
    b = j - g * n1
    n_rot = 0
    for ci in np.unique(c):
        n_rot += len(_baby_order(sorted({int(v) for v in b[c == ci]})))
    for oi in np.unique(o):
        gg = g[o == oi]
        n_rot += int(max(gg.max(), 0) - min(gg.min(), 0))
    return n_rot


def rot_step(pattern: np.ndarray, in_idx: np.ndarray, out_idx: np.ndarray, *, merge: int = 1, cols=None,
             col_mult: float = 1.0, grid: Grid | None = None, fold: int = 0) -> RotStep:
    S = in_idx.shape[1]
    R, K, o, s, c, j = _choose_terms(pattern, in_idx, out_idx, fold)
    empty = np.setdiff1d(np.arange(out_idx.shape[0]), o)
    if len(empty):
        # an output ciphertext whose positions all read padding would be its bias alone: a constant the server
        # cannot make without encrypting (and SEAL refuses a product by a zero plaintext), so this layout is not
        # an option; the planner takes another (`_candidates` skips it, e.g. no polyphase split)
        raise ShapeError(f"output ciphertext {int(empty[0])} receives no term")
    if fold:  # after out[t] = acc[t] + acc[t + F] the partner slots hold partial sums: garbage, never read
        out_idx = out_idx.copy()
        own = out_idx >= 0
        out_idx[(np.roll(own, -fold, axis=1) | np.roll(own, fold, axis=1)) & ~own] = GARBAGE
    n_in = int(in_idx.shape[0])
    tc = np.unique((o * n_in + c) * (2 * S) + (j + S))
    trip = np.stack([tc // (2 * S) // n_in, tc // (2 * S) % n_in, tc % (2 * S) - S], axis=1)
    best = None
    n1 = 1
    while n1 <= S:
        cost = _bsgs_cost(trip[:, 0], trip[:, 1], trip[:, 2], n1) if len(trip) else 0
        if best is None or cost < best[0]:
            best = (cost, n1)
        n1 *= 2
    n1 = best[1]
    g = np.floor_divide(j, n1)
    b = j - g * n1
    # giants are cyclic (S / n1 of them): taken mod S / n1 they need only the key n1, no -n1; do so unless
    # that costs more Horner steps (small negative shifts, e.g. from padding)
    gu = g % (S // n1)
    signed = sum(int(max(g[o == oi].max(), 0) - min(g[o == oi].min(), 0)) for oi in np.unique(o))
    unsigned = sum(int(gu[o == oi].max()) for oi in np.unique(o))
    if unsigned <= signed:
        g = gu
    G = int(g.max() - g.min() + 1) if len(g) else 1
    gmin = int(g.min()) if len(g) else 0
    code = ((o * in_idx.shape[0] + c) * G + (g - gmin)) * n1 + b
    uniq, inv = np.unique(code, return_inverse=True)
    keys = np.zeros((len(uniq), 4), dtype=np.int64)
    keys[inv, 0], keys[inv, 1], keys[inv, 2], keys[inv, 3] = o, c, g, b
    st = RotStep(merge, int(in_idx.shape[0]), out_idx, n1, keys, inv.astype(np.int64), s, R, K, cols,
                 float(col_mult), grid, fold=(int(fold),) if fold else ())
    st.cost = st.n_rotations() * C_ROT + len(keys) * C_MUL + st.n_out * C_ROT \
        + len(st.key_steps(S)) * C_KEY
    return st


def __getattr__(name):
    """The planner's names (`convpack_plan`) stay importable from here."""
    if name in ("plan_multi", "clean_output", "plan_cost", "input_grid", "input_grids", "check_plan"):
        from . import convpack_plan
        return getattr(convpack_plan, name)
    raise AttributeError(name)


__all__ = ["Grid", "RotStep", "rot_step"]
