"""Compiling and evaluating a latency plan: plaintext diagonals encoded once, then the slot arithmetic of each
step on ciphertexts (`SealBackend`) or on plaintext vectors (`NumpyBackend`, the property tests' reference).

Why apart from `latency.py`: choosing a plan and running it are separate concerns (and one module was 770 lines).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from typing import TYPE_CHECKING

from ...errors import ShapeError
from .latency_plan import ActStep, GatherStep, LatencyPlan

if TYPE_CHECKING:  # annotations only: the HE helper process imports this module without torch
    from .program import Program

# --- evaluation ------------------------------------------------------------------------------------
class NumpyBackend:
    """Slot arithmetic on plaintext vectors: the reference for the packing logic (no encryption)."""

    def __init__(self, slots: int):
        self.slots = slots

    def encode(self, values, scale, level):
        return np.asarray(values, dtype=np.float64)

    def mul_plain(self, ct, pt):
        return ct * pt

    def add(self, a, b):
        return a + b

    def add_plain(self, ct, pt):
        return ct + pt

    def rotate(self, ct, k):
        return np.roll(ct, -k)

    def rescale(self, ct):
        return ct

    def mod_switch(self, ct):
        return ct

    def square(self, ct):
        return ct * ct

    def multiply(self, a, b):
        return a * b


class SealBackend:
    """The same operations on SEAL ciphertexts (relinearization after every ct x ct product)."""

    def __init__(self, ctx):
        self.ctx = ctx
        self.ev = ctx.evaluator
        import tenseal.sealapi as seal
        self._seal = seal

    def encode(self, values, scale, level):
        return self.ctx.encode(values, scale, level)

    def _new(self):
        return self._seal.Ciphertext()

    def mul_plain(self, ct, pt):
        out = self._new()
        self.ev.multiply_plain(ct, pt, out)
        return out

    def add(self, a, b):
        self.ev.add_inplace(a, b)
        return a

    def add_plain(self, ct, pt):
        self.ev.add_plain_inplace(ct, pt)
        return ct

    def rotate(self, ct, k):
        out = self._new()
        self.ev.rotate_vector(ct, int(k), self.ctx.galois_keys, out)
        return out

    def rescale(self, ct):
        self.ev.rescale_to_next_inplace(ct)
        return ct

    def mod_switch(self, ct):
        self.ev.mod_switch_to_next_inplace(ct)
        return ct

    def square(self, ct):
        out = self._new()
        self.ev.square(ct, out)
        self.ev.relinearize_inplace(out, self.ctx.relin_keys)
        return out

    def multiply(self, a, b):
        out = self._new()
        self.ev.multiply(a, b, out)
        self.ev.relinearize_inplace(out, self.ctx.relin_keys)
        return out


@dataclass
class _Compiled:
    kind: str
    pts: dict = field(default_factory=dict)
    bias: object = None
    const: object = None
    step: object = None


class CompiledPlan:
    """A plan with the server's weights encoded as plaintexts for one backend (and its scales/levels).

    `scales`: a callable giving (input scale, [prime dropped at each level], target scales) for SEAL; for the
    numpy backend every scale is 1 and rescales are no-ops.
    """

    def __init__(self, plan: LatencyPlan, prog: Program, backend, *, input_scale=1.0, drop_primes=None,
                 scale_bits=None, output_scale_bits=None, mask: bool = False, mask_bits: int | None = None,
                 rescale_squares: bool = False):
        self.plan, self.backend = plan, backend
        #: item index -> (item, helper's share mask, its slot vectors, scale, level): `latency_par`
        self.splits: dict = {}
        self.par_key: str | None = None
        S = plan.slots
        segs = prog.segments
        self.items: list[_Compiled] = []
        exact = drop_primes is not None
        s_cur, level = float(input_scale), 0
        seg_i = 0
        for st in plan.steps:
            if isinstance(st, ActStep):
                if st.kind == "square" and rescale_squares:  # circuit-private chains: x² gets its own prime
                    q = drop_primes[level] if exact else 1.0
                    s_cur = s_cur * s_cur / q
                    level += 1
                    self.items.append(_Compiled("square_r", step=st))
                elif st.kind == "square":
                    s_cur = s_cur * s_cur
                    self.items.append(_Compiled("square", step=st))
                else:
                    s2 = s_cur * s_cur
                    c = backend.encode(np.full(S, st.const), s2, level)
                    q = drop_primes[level] if exact else 1.0
                    s_cur = s_cur * (s2 / q)
                    level += 1
                    self.items.append(_Compiled("cube", const=c, step=st))
                continue
            seg = segs[seg_i]
            last = seg_i == len(segs) - 1
            seg_i += 1
            if exact:
                target = 2.0 ** (output_scale_bits if last else scale_bits)
                q = drop_primes[level]
                p_scale = target * q / s_cur
                s_after = (s_cur * p_scale) / q
            else:
                p_scale, s_after = 1.0, 1.0
            item = _Compiled(st.kind, step=st)
            if st.kind == "rot":
                from .convpack_eval import compile_rot
                compile_rot(item, st, seg, backend, S, p_scale, level)
                if isinstance(backend, SealBackend):
                    self._split(item, st, seg, S, p_scale, level)
            elif isinstance(st, GatherStep):
                from .convpack_eval import is_zero_plaintext
                for c in range(st.n_ct):
                    r, g = st.rows[c], st.gather[c]
                    w = np.where(r >= 0, seg.A[np.maximum(r, 0), np.maximum(g, 0)], 0.0)
                    pt = backend.encode(w, p_scale, level)
                    if not is_zero_plaintext(pt):  # all-zero weights (a pruned network) add nothing
                        item.pts[c] = pt
            else:
                from .convpack_eval import is_zero_plaintext
                P = st.period
                share = self._diag_view(item, st, S, share=isinstance(backend, SealBackend))
                theirs = {} if share is None else {(int(a), int(b)): None for _, _, a, b in item.view.keys[share]}
                for j in st.used_j():
                    a, b = divmod(j, st.n1)
                    r, k = st.rows[j], st.cols[j]
                    d = np.where(r >= 0, seg.A[np.maximum(r, 0), np.maximum(k, 0)], 0.0)
                    d = np.roll(np.tile(d, S // P), a * st.n1)
                    pt = backend.encode(d, p_scale, level)
                    if not is_zero_plaintext(pt):  # an all-zero diagonal (a pruned network) adds nothing
                        item.pts[(a, b)] = pt
                    if (a, b) in theirs:
                        theirs[(a, b)] = d  # the helper's share: its slot vectors (only those are kept)
                if item.view is not None:
                    item.view_pts = {(0, 0, a, b): pt for (a, b), pt in item.pts.items()}
                if theirs:
                    self.splits[len(self.items)] = (_Compiled("rot", step=item.view), share,
                                                    np.stack(list(theirs.values())), float(p_scale), int(level))
            level += 1
            out_rows = st.out_idx if st.kind == "rot" else [st.out.tiled(S)]
            item.bias = []
            for out_idx in out_rows:
                bias = np.where(out_idx >= 0, seg.b[np.maximum(out_idx, 0)], 0.0)
                item.bias.append(backend.encode(bias, s_after, level) if np.any(bias) else None)
            s_cur = s_after
            self.items.append(item)
        if mask:
            # keep exactly one copy of each logit: a 0/1 plaintext at the scale of the prime the next rescale
            # drops, so the scale comes back unchanged; every other slot is multiplied by (encoding error of 0)
            # (mask_bits given: no level -- the mask is encoded at 2^mask_bits and the scale grows by that much)
            keep = np.zeros(S)
            keep[plan.output_slots()] = 1.0
            if mask_bits is None:
                q = drop_primes[level] if exact else 1.0
                self.items.append(_Compiled("mask", const=backend.encode(keep, q, level)))
                level += 1
            else:
                q = 2.0 ** mask_bits if exact else 1.0
                self.items.append(_Compiled("mask0", const=backend.encode(keep, q, level)))
                s_cur *= q
        self.final_scale, self.final_level = s_cur, level

    def _split(self, item, st, seg, S, p_scale, level) -> None:
        from .convpack_eval import rot_vectors
        from .latency_par import split_rot
        mask = split_rot(st)
        if mask is not None:
            vecs = rot_vectors(st, seg, S, rows=np.flatnonzero(mask))
            self.splits[len(self.items)] = (item, mask, vecs, float(p_scale), int(level))

    @staticmethod
    def _diag_view(item, st, S, share: bool):
        """A diagonal step as a `RotStep` (`latency_par.diag_view`: the same babies, Horner giants and plaintexts,
        keyed (0, 0, giant, baby)) in `item.view` (None: not shareable), and the helper's share of its terms
        (None: none). Its fold, rescale and bias stay with the parent. `share`: a SEAL plan, whose split steps the
        helper may take (any backend gets the view: the tests split numpy plans by hand)."""
        from .latency_par import diag_view, split_rot
        item.view = diag_view(st, S)
        return split_rot(item.view) if share and item.view is not None else None

    def evaluate(self, cts: list, trace: list | None = None, backend=None, all_outputs: bool = False, par=None):
        """Run the plan on the input ciphertexts (or vectors); `backend` overrides the compile-time one
        (the server compiles plaintexts once and evaluates with each connection's keys). A value is a list
        of ciphertexts (one, except between channel-packed segments); `all_outputs` returns the whole list
        (a masked hybrid segment may end on several). `par`: a `latency_par.ParSession` that computes a
        share of the split steps in the helper process."""
        be = backend or self.backend
        if self.plan.key_paths:
            from .rotkeys import ComposedRotations
            be = ComposedRotations(be, self.plan.key_paths, self.plan.slots)
        xs = None
        for idx, item in enumerate(self.items):
            if trace is not None and xs is not None:
                trace.append(xs[0] if len(xs) == 1 else list(xs))
            st = item.step
            if item.kind == "mask":
                xs = [be.rescale(be.mul_plain(xs[0], item.const))]
            elif item.kind == "mask0":
                xs = [be.mul_plain(xs[0], item.const)]
            elif item.kind == "square":
                xs = [be.square(x) for x in xs]
            elif item.kind == "square_r":
                xs = [be.rescale(be.square(x)) for x in xs]
            elif item.kind == "cube":
                xs = [self._cube(be, x, item.const) for x in xs]
            elif item.kind == "rot":
                from .convpack_eval import evaluate_rot, merge_inputs, rot_partials
                src = xs if xs is not None else cts
                if par is not None and idx in self.splits:
                    merged = merge_inputs(be, st, src)
                    accs = par.run_rot(be, idx, st, item.pts, merged) or rot_partials(be, st, item.pts, merged)
                else:
                    accs = evaluate_rot(be, st, item.pts, src)
                xs = [self._finish(be, acc, st.fold, bias) for acc, bias in zip(accs, item.bias)]
            elif item.kind == "gather":
                acc = None
                for c, pt in item.pts.items():
                    t = be.mul_plain(cts[c], pt)
                    acc = t if acc is None else be.add(acc, t)
                if acc is None:
                    raise ShapeError("every weight of this layer is zero: nothing to evaluate")
                xs = [self._finish(be, acc, st.fold, item.bias[0])]
            elif par is not None and idx in self.splits:  # a diagonal step, shared with the helper
                from .convpack_eval import rot_partials
                src = xs[0] if xs is not None else cts[0]
                view, pts = item.view, item.view_pts
                acc = (par.run_rot(be, idx, view, pts, [src]) or rot_partials(be, view, pts, [src]))[0]
                xs = [self._finish(be, acc, st.fold, item.bias[0])]
            else:
                src = xs[0] if xs is not None else cts[0]
                babies = {0: src}
                for b, prev, step in st.baby_chain():
                    babies[b] = be.rotate(babies[prev], step)
                inners: dict[int, object] = {}
                for (a, b), pt in item.pts.items():
                    t = be.mul_plain(babies[b], pt)
                    inners[a] = t if a not in inners else be.add(inners[a], t)
                if not inners:
                    raise ShapeError("every weight of this layer is zero: nothing to evaluate")
                acc = None
                for a in range(max(inners), -1, -1):
                    if acc is not None:
                        acc = be.rotate(acc, st.n1)
                    if a in inners:
                        acc = inners[a] if acc is None else be.add(acc, inners[a])
                xs = [self._finish(be, acc, st.fold, item.bias[0])]
        if trace is not None:
            trace.append(xs[0])
        return list(xs) if all_outputs else xs[0]

    @staticmethod
    def _cube(be, x, const):
        u2 = be.rescale(be.add_plain(be.square(x), const))
        return be.multiply(be.mod_switch(x), u2)

    @staticmethod
    def _finish(be, acc, fold, bias):
        # rotate while the scale is still large (product scale ~2^50): SEAL's key-switching noise (~2^13)
        # is then invisible; one rescale afterwards
        for f in fold:
            acc = be.add(acc, be.rotate(acc, f))
        acc = be.rescale(acc)
        if bias is not None:
            acc = be.add_plain(acc, bias)
        return acc


def client_vectors(plan: LatencyPlan, x: np.ndarray) -> np.ndarray:
    """The client's slot vectors (n_ct, slots) for one flat input: its own plaintext, gathered."""
    flat = np.asarray(x, dtype=np.float64).reshape(-1)
    g = plan.input.gathers
    return np.where(g >= 0, flat[np.maximum(g, 0)], 0.0)


def simulate(plan: LatencyPlan, prog: Program, x: np.ndarray) -> np.ndarray:
    """Run the packed evaluation on plaintext slot vectors (no encryption) and decode the logits."""
    comp = CompiledPlan(plan, prog, NumpyBackend(plan.slots))
    out = comp.evaluate(list(client_vectors(plan, x)))
    return out[plan.output_slots()]
