"""Evaluating a channel-packed step (`convpack.RotStep`): its plaintexts, and its rotations and products.

Why apart from `convpack.py`: that module decides a layout and a step's terms from the public architecture
(client and server both run it, and so does the planner's search); this one runs on the server only, with
the weights and a backend (SEAL, numpy in the tests, or the helper process's share in `latency_par`). It
evaluates `out[o] = sum_{c, j} rot(x[c], j) * d[o, c, j]` baby-step giant-step, as `convpack`'s docstring
describes: babies rotated once per input ciphertext, giants by Horner's rule, plaintexts pre-rotated by -g*n1.
"""
from __future__ import annotations

import numpy as np

from ...errors import ShapeError
from .convpack import RotStep


def evaluate_rot(be, st: RotStep, pts: dict, xs: list) -> list:
    """The products and rotations of one `RotStep` (before its rescale): one accumulator per output ct."""
    out = rot_partials(be, st, pts, merge_inputs(be, st, xs))
    for o, acc in enumerate(out):
        if acc is None:
            raise ShapeError(f"output ciphertext {o} receives no term")
    return out


def merge_inputs(be, st: RotStep, xs: list) -> list:
    """AvgPool folding: the sum of the phase ciphertexts (in place: inputs are not reused)."""
    if len(xs) != st.n_in * st.merge:
        raise ShapeError(f"expected {st.n_in * st.merge} ciphertexts, got {len(xs)}")
    if st.merge == 1:
        return list(xs)
    merged = []
    for q in range(st.n_in):
        acc = xs[q]
        for p in range(1, st.merge):
            acc = be.add(acc, xs[p * st.n_in + q])
        merged.append(acc)
    return merged


def rot_partials(be, st: RotStep, pts: dict, xs: list, only=None) -> list:
    """Per output ciphertext, the sum of the terms (keys of `pts`) on the merged inputs `xs`, or None where no
    term lands. `only`: a subset of the terms (the rest is someone else's share, `latency_par`); the babies
    are then the ones those terms use and their ancestors in the step's chain."""
    keys = list(pts) if only is None else [k for k in pts if k in only]
    babies = []
    for c in range(st.n_in):
        chain = st.baby_chain(c)
        need = {b for (_, ci, _, b) in keys if ci == c}
        prev_of = {b: prev for b, prev, _ in chain}
        for b in sorted(need, reverse=True):  # ancestors (a chain goes from smaller to larger babies)
            while b in prev_of and prev_of[b] not in need:
                b = prev_of[b]
                need.add(b)
        bc = {0: xs[c]}
        for b, prev, step in chain:
            if b in need:
                bc[b] = be.rotate(bc[prev], step)
        babies.append(bc)
    inners: dict = {}
    for k in keys:
        o, c, g, b = k
        t = be.mul_plain(babies[c][b], pts[k])
        inners[(o, g)] = t if (o, g) not in inners else be.add(inners[(o, g)], t)
    neg = st.out_idx.shape[1] - st.n1  # a left rotation by -n1, as a non-negative step
    out = []
    for o in range(st.n_out):
        gs = [g for (oo, g) in inners if oo == o]
        lo, hi = (min(min(gs), 0), max(max(gs), 0)) if gs else (0, 0)
        acc = None
        for g in range(hi, 0, -1):  # Horner, positive giants: key n1
            if acc is not None:
                acc = be.rotate(acc, st.n1)
            if (o, g) in inners:
                acc = inners[(o, g)] if acc is None else be.add(acc, inners[(o, g)])
        total = be.rotate(acc, st.n1) if acc is not None else None
        acc = None
        for g in range(lo, 0):  # Horner, negative giants: key -n1
            if acc is not None:
                acc = be.rotate(acc, neg)
            if (o, g) in inners:
                acc = inners[(o, g)] if acc is None else be.add(acc, inners[(o, g)])
        if acc is not None:
            acc = be.rotate(acc, neg)
            total = acc if total is None else be.add(total, acc)
        if (o, 0) in inners:
            total = inners[(o, 0)] if total is None else be.add(total, inners[(o, 0)])
        out.append(total)
    return out


def rot_vectors(st, seg, S: int, rows=None) -> np.ndarray:
    """(K, S): the slot vector of each plaintext of a `RotStep` (or of `rows` of them), pre-rotated by -g*n1."""
    A = seg.A if st.cols is None else seg.A[:, st.cols] * st.col_mult
    rows = np.arange(len(st.keys)) if rows is None else np.asarray(rows, dtype=np.int64)
    where = np.full(len(st.keys), -1, dtype=np.int64)
    where[rows] = np.arange(len(rows))
    sel = where[st.term_key] >= 0
    d = np.zeros((len(rows), S))
    d[where[st.term_key[sel]], st.term_s[sel]] = A[st.term_R[sel], st.term_k[sel]]
    for i, r in enumerate(rows):
        d[i] = np.roll(d[i], int(st.keys[r, 2]) * st.n1)
    return d


def is_zero_plaintext(pt) -> bool:
    """A plaintext that encodes nothing (a SEAL plaintext's `is_zero`, a reference backend's all-zero vector).

    Why: SEAL refuses a product by the zero polynomial ("result ciphertext is transparent": it would be no
    encryption at all), and a pruned network's weights make whole terms zero (a zeroed channel, zeroed inputs of
    a dense layer). Such a term adds exactly nothing, so compilation leaves it out."""
    test = getattr(pt, "is_zero", None)
    if callable(test):
        return bool(test())
    return isinstance(pt, np.ndarray) and not np.any(pt)


def compile_rot(item, st, seg, backend, S: int, p_scale: float, level: int) -> None:
    """One plaintext per (output ct, input ct, giant, baby) of a `convpack.RotStep`, pre-rotated by -g*n1; a
    term whose weights are all zero has none (`is_zero_plaintext`)."""
    d = rot_vectors(st, seg, S)
    for i, (o, c, g, b) in enumerate(st.keys):
        pt = backend.encode(d[i], p_scale, level)
        if not is_zero_plaintext(pt):
            item.pts[(int(o), int(c), int(g), int(b))] = pt



__all__ = ["evaluate_rot", "merge_inputs", "rot_partials", "compile_rot", "rot_vectors", "is_zero_plaintext"]
