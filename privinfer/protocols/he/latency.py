"""Latency packing: one image per query, every vector in one CKKS ciphertext, any chain of segments.

Slot layouts
    A `Layout` says what each slot of one period holds: an element index (>= 0), an exact zero (-1) or garbage
    (-2: a partial sum nobody may read). A layout with period p < slots repeats p-periodically over the slots.

First segment: client-side gather ("im2col", generalized)
    The first affine map (e.g. conv -> avgpool -> flatten, any channels / stride / padding, composed into one
    matrix) has at most T structural non-zeros per output row ("taps"). The client, which knows the public
    architecture, sends ceil(T / g) ciphertexts; slot s of ciphertext c holds the input pixel that tap
    c*g + (s // B) % g of output row s % B needs (B = output block, g = taps per ciphertext). The server does
    plaintext-ciphertext products only, sums them, rescales, and folds the g blocks with log2(g) rotations; the
    result is the whole first layer, replicated with period B. A dense first layer instead is sent as one
    replicated ciphertext and runs through the diagonal method below (the planner picks the cheaper).

Later segments: generalized diagonal method (Halevi-Shoup / Gazelle hybrid), baby-step giant-step
    For an input layout of period P and an output layout chosen by a strategy, the plan assigns every
    structural weight W[R, k] to one (slot s, rotation j) with input[(s + j) % P] == k and s owned by output R;
    `z = sum_j d_j * rot(x, j)` then a rotate-and-sum over the fold offsets puts y_R on its slots. Strategies:
      * compact: outputs at slots 0..n_out-1, J = next_pow2(n_out) diagonals, fold within the input period;
        the output is clean and replicated (period next_pow2(n_out));
      * copies: an input replicated m times lets each copy handle n_out/m rows: J = n_out/m diagonals only (the
        output is then spread over the copies with garbage in between, fine for a following segment).
    Rotations by j = a*n1 + b are done as baby steps b (each one key switch from a previous baby, keys 1, 2, 4,
    ... n1/2) and giant steps by Horner's rule (one key: n1); plaintext diagonals are pre-rotated by -a*n1.
    Every rotation step is a power of two, so at most log2(slots) Galois keys are ever needed, and the client
    generates only those in `LatencyPlan.rotation_steps`.

Levels: each segment multiplies by plaintexts encoded at a scale chosen so that its single rescale lands on the
target scale exactly; x² is not rescaled (the next segment's rescale absorbs it); u(u² + c) rescales once.
Circuit-private parameters (scales of 2^40 and more, `rescale_squares`) rescale x² on its own instead: the
prime after a square would otherwise need 2*scale + weight - scale bits, over SEAL's 60-bit limit.
All giant-step and fold rotations happen *before* the segment's rescale, while the scale is ~2^50: SEAL's
key-switching noise (~2^13 absolute) would cost ~2^-12 relative precision per rotation at 2^25.

Convolutional networks whose vectors do not fit one ciphertext (or whose gather would upload many) use the
channel packing of `convpack.py` instead: values over several ciphertexts, the client uploads the image only;
`plan_latency` picks it when the cost model expects it to be clearly cheaper (server option `conv_packing`:
auto / on / off, public in WELCOME), and `rotkeys.limit_keys` then drops rarely used Galois keys (`key_paths`).

The evaluator is written against a small backend interface; `NumpyBackend` runs the very same slot
arithmetic on plaintext vectors (used by the property tests), `SealBackend` on ciphertexts.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field

import numpy as np

from ...errors import ParameterError, ShapeError
from .program import Activation, Affine, Program

ZERO, GARBAGE = -1, -2
# rough costs (ms) at N=8192 on this class of machine, for choosing between strategies
C_ROT, C_MUL, C_CT = 3.0, 0.45, 6.0


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


# --- layouts ---------------------------------------------------------------------------------------
@dataclass
class Layout:
    period: int
    idx: np.ndarray

    def tiled(self, P: int) -> np.ndarray:
        if P % self.period:
            raise ShapeError(f"period {P} is not a multiple of {self.period}")
        return np.tile(self.idx, P // self.period)

    def compressed(self) -> "Layout":
        p = 1
        while p < self.period:
            if np.array_equal(self.idx, np.tile(self.idx[:p], self.period // p)):
                return Layout(p, self.idx[:p].copy())
            p *= 2
        return self

    def first_slot(self, n: int) -> np.ndarray:
        """The first slot holding each element 0..n-1 (raises if one is missing)."""
        pos = np.full(n, -1, dtype=np.int64)
        vals = self.idx
        where = np.flatnonzero(vals >= 0)
        order = where[::-1]
        pos[vals[order]] = order  # later writes (smaller slots) win
        if (pos < 0).any():
            raise ShapeError(f"layout lacks elements {np.flatnonzero(pos < 0)[:10].tolist()}")
        return pos

    @property
    def has_garbage(self) -> bool:
        return bool((self.idx == GARBAGE).any())


# --- plan steps ------------------------------------------------------------------------------------
@dataclass
class GatherStep:
    """First segment, client-side gather: n_ct ciphertexts, products, one rescale, log2(g) folds."""
    block: int
    groups: int
    gather: np.ndarray  # (n_ct, slots) input element per slot, -1 = zero
    rows: np.ndarray    # (n_ct, slots) output row whose weight sits in this slot, -1 = none
    fold: list
    out: Layout
    kind = "gather"

    @property
    def n_ct(self) -> int:
        return int(self.gather.shape[0])


@dataclass
class DiagStep:
    """A segment by the generalized diagonal method with baby-step giant-step rotations."""
    n_out = 1  # output ciphertexts
    strategy: str
    period: int
    n1: int
    n2: int
    rows: np.ndarray   # (J, period) output row per (diagonal j, slot), -1 = zero
    cols: np.ndarray   # (J, period) input element per (diagonal j, slot)
    fold: list
    out: Layout
    cost: float = 0.0
    kind = "diag"

    @property
    def J(self) -> int:
        return int(self.rows.shape[0])

    def used_j(self) -> list[int]:
        return [int(j) for j in np.flatnonzero((self.rows >= 0).any(axis=1))]

    def babies(self) -> list[int]:
        return sorted({j % self.n1 for j in self.used_j()})

    def giants(self) -> list[int]:
        return sorted({j // self.n1 for j in self.used_j()})


@dataclass
class ActStep:
    kind: str
    const: float = 0.0


@dataclass
class InputSpec:
    """What the client sends: `gathers[c][s]` = input element for slot s of ciphertext c (-1 = zero)."""
    gathers: np.ndarray

    @property
    def n_ct(self) -> int:
        return int(self.gathers.shape[0])


@dataclass
class LatencyPlan:
    slots: int
    input: InputSpec
    steps: list = field(default_factory=list)
    n_out: int = 0
    #: rotation steps that get no Galois key of their own: step -> the keyed steps that compose it
    key_paths: dict = field(default_factory=dict)

    @property
    def out(self) -> Layout:
        return [s for s in self.steps if not isinstance(s, ActStep)][-1].out

    def output_slots(self) -> np.ndarray:
        return self.out.first_slot(self.n_out)

    @property
    def rotation_steps(self) -> list[int]:
        """The Galois keys the client generates: every rotation the evaluation performs is one of these."""
        raw = set(self.raw_rotation_steps())
        for r, path in self.key_paths.items():
            raw.discard(r)
            raw.update(path)
        return sorted(raw)

    def raw_rotation_steps(self) -> list[int]:
        steps: set[int] = set()
        for st in self.steps:
            if getattr(st, "kind", "") == "rot":
                steps.update(st.key_steps(self.slots))
            if isinstance(st, (GatherStep, DiagStep)):
                steps.update(int(f) for f in st.fold)
            if isinstance(st, DiagStep):
                steps.update(1 << (b.bit_length() - 1) for b in _baby_order(st.babies()))
                if max(st.giants(), default=0) > 0:
                    steps.add(st.n1)
        return sorted(s % self.slots for s in steps if s % self.slots)

    def n_rotations(self) -> int:
        n = 0
        for st in self.steps:
            if getattr(st, "kind", "") == "rot":
                n += st.n_rotations()
            elif isinstance(st, GatherStep):
                n += len(st.fold)
            elif isinstance(st, DiagStep):
                n += len(_baby_order(st.babies())) + max(st.giants(), default=0) + len(st.fold)
        return n

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"slots": self.slots, "n_out": self.n_out, "rot": self.rotation_steps}).encode())
        if self.key_paths:
            h.update(json.dumps(sorted((int(k), list(map(int, v))) for k, v in self.key_paths.items())).encode())
        h.update(np.ascontiguousarray(self.input.gathers, dtype=np.int64).tobytes())
        for st in self.steps:
            if isinstance(st, ActStep):
                h.update(f"act:{st.kind}:{st.const!r}".encode())
            elif getattr(st, "kind", "") == "rot":
                h.update(st.digest_bytes())
            elif isinstance(st, GatherStep):
                h.update(np.ascontiguousarray(st.rows, dtype=np.int64).tobytes())
                h.update(f"gather:{st.block}:{st.groups}:{st.fold}".encode())
            else:
                h.update(np.ascontiguousarray(st.rows, dtype=np.int64).tobytes())
                h.update(np.ascontiguousarray(st.cols, dtype=np.int64).tobytes())
                h.update(f"diag:{st.period}:{st.n1}:{st.n2}:{st.fold}".encode())
        return h.hexdigest()[:32]

    def describe(self) -> str:
        rows = [f"latency plan: {self.slots} slots, {self.input.n_ct} input ciphertext(s), "
                f"{self.n_rotations()} rotations, Galois steps {self.rotation_steps}"]
        for st in self.steps:
            if getattr(st, "kind", "") == "rot":
                rows.append(f"  rot: {st.n_in * st.merge} -> {st.n_out} ct (merge {st.merge}), {len(st.keys)} "
                            f"plaintexts, {st.n_rotations()} rotations (n1={st.n1})")
            elif isinstance(st, GatherStep):
                rows.append(f"  gather: block {st.block}, {st.groups} taps/ct, {st.n_ct} ct, fold {st.fold}")
            elif isinstance(st, DiagStep):
                rows.append(f"  diag[{st.strategy}]: period {st.period}, {len(st.used_j())} diagonals "
                            f"(n1={st.n1}, n2={st.n2}), fold {st.fold}, out period {st.out.period}")
            else:
                rows.append(f"  {st.kind}")
        return "\n".join(rows)


def _baby_order(babies: list[int]) -> list[int]:
    """All babies that must be computed (closure under b -> b - highbit(b)), excluding 0, ascending."""
    need: set[int] = set()
    for b in babies:
        while b:
            need.add(b)
            b -= 1 << (b.bit_length() - 1)
    return sorted(need)


# --- planning --------------------------------------------------------------------------------------
def _gather_step(seg: Affine, slots: int) -> GatherStep:
    n_out, n_in = seg.pattern.shape
    B = next_pow2(n_out)
    if B > slots:
        raise ParameterError(f"first segment has {n_out} outputs, more than the {slots} slots")
    counts = seg.pattern.sum(axis=1)
    T = max(1, int(counts.max()))
    g = min(slots // B, next_pow2(T))
    n_ct = -(-T // g)
    taps = np.full((n_out, n_ct * g), -1, dtype=np.int64)
    r_idx, c_idx = np.nonzero(seg.pattern)
    # position of each non-zero within its row
    order = np.argsort(r_idx, kind="stable")
    r_sorted, c_sorted = r_idx[order], c_idx[order]
    starts = np.searchsorted(r_sorted, np.arange(n_out))
    pos = np.arange(len(r_sorted)) - starts[r_sorted]
    taps[r_sorted, pos] = c_sorted
    s = np.arange(slots)
    blk, i = s // B, s % B
    gather = np.full((n_ct, slots), -1, dtype=np.int64)
    rows = np.full((n_ct, slots), -1, dtype=np.int64)
    valid_row = i < n_out
    for c in range(n_ct):
        tap = c * g + blk % g
        col = np.where(valid_row, taps[np.minimum(i, n_out - 1), tap], -1)
        gather[c] = col
        rows[c] = np.where(col >= 0, i, -1)
    fold = [B << k for k in range(int(math.log2(g)))]
    out = Layout(B, np.where(np.arange(B) < n_out, np.arange(B), ZERO)).compressed()
    return GatherStep(B, g, gather, rows, fold, out)


def _assign(pattern: np.ndarray, in_idx: np.ndarray, owner: np.ndarray, J: int):
    """Assign every structural weight to one (diagonal j, slot); None if some weight cannot be placed."""
    n_out, n_in = pattern.shape
    P = len(in_idx)
    assigned = np.zeros_like(pattern, dtype=bool)
    rows = np.full((J, P), -1, dtype=np.int64)
    cols = np.full((J, P), -1, dtype=np.int64)
    used = np.flatnonzero(owner >= 0)
    R_of = owner[used]
    for j in range(J):
        k = in_idx[(used + j) % P]
        ok = k >= 0
        s1, R1, k1 = used[ok], R_of[ok], k[ok]
        ok2 = pattern[R1, k1] & ~assigned[R1, k1]
        s2, R2, k2 = s1[ok2], R1[ok2], k1[ok2]
        if len(s2) == 0:
            continue
        _, first = np.unique(R2 * n_in + k2, return_index=True)
        s2, R2, k2 = s2[first], R2[first], k2[first]
        rows[j, s2], cols[j, s2] = R2, k2
        assigned[R2, k2] = True
    if not np.array_equal(assigned, pattern):
        return None
    return rows, cols


def _fold_layout(rows: np.ndarray, owner: np.ndarray, offsets: np.ndarray) -> Layout:
    """Output layout after `out[t] = sum_f z[(t + f) % P]` where z is non-zero only on used slots."""
    P = rows.shape[1]
    used = (rows >= 0).any(axis=0)
    own = np.where(used, owner, -1)
    step = int(offsets[1] - offsets[0]) if len(offsets) > 1 else P
    if len(offsets) * step == P and np.array_equal(offsets, np.arange(len(offsets)) * step):
        return _fold_layout_subgroup(own, owner, step)
    per_row = np.bincount(own[own >= 0], minlength=int(owner.max()) + 1 if owner.max() >= 0 else 1)
    per_row = np.concatenate([per_row, np.zeros(max(0, int(owner.max()) + 1 - len(per_row)), dtype=per_row.dtype)])
    t = np.arange(P)
    M = own[(t[:, None] + offsets[None, :]) % P]
    r0 = M.max(axis=1)
    nonempty = r0 >= 0
    same = ((M == r0[:, None]) | (M < 0)).all(axis=1)
    count = (M == r0[:, None]).sum(axis=1)
    complete = nonempty & same & (count == per_row[np.maximum(r0, 0)])
    idx = np.where(~nonempty, ZERO, np.where(complete, r0, GARBAGE))
    # a row with no structural weight is exactly 0 (before its bias) wherever nothing is summed: its slots
    empty_rows = per_row == 0
    own_t = owner[t]
    mark = ~nonempty & (own_t >= 0)
    mark[mark] = empty_rows[np.minimum(own_t[mark], len(empty_rows) - 1)] & (own_t[mark] < len(empty_rows))
    idx = np.where(mark, own_t, idx)
    return Layout(P, idx.astype(np.int64)).compressed()


def _fold_layout_subgroup(own: np.ndarray, owner: np.ndarray, step: int) -> Layout:
    """`_fold_layout` when the offsets are all multiples of `step` (a subgroup of Z_P): O(P), period step."""
    P = len(own)
    cls = own.reshape(P // step, step)          # column r = residue class r
    r0 = cls.max(axis=0)
    nonempty = r0 >= 0
    same = ((cls == r0[None, :]) | (cls < 0)).all(axis=0)
    n_rows = int(owner.max()) + 1 if owner.max() >= 0 else 0
    idx = np.where(~nonempty, ZERO, np.where(same, r0, GARBAGE))
    if n_rows:
        per_row = np.bincount(own[own >= 0], minlength=n_rows)
        oc = owner.reshape(P // step, step).max(axis=0)  # the row owning this class (if any)
        empty = ~nonempty & (oc >= 0)
        empty[empty] = per_row[oc[empty]] == 0
        idx = np.where(empty, oc, idx)
    return Layout(step, idx.astype(np.int64)).compressed()


def _bsgs(used_j: list[int], J: int) -> tuple[int, int]:
    best = None
    n1 = 1
    while n1 <= max(J, 1):
        babies = _baby_order(sorted({j % n1 for j in used_j}))
        giants = max((j // n1 for j in used_j), default=0)
        cost = len(babies) + giants
        if best is None or cost < best[0]:
            best = (cost, n1, giants + 1)
        n1 *= 2
    return best[1], best[2]


def _diag_candidates(seg: Affine, lin: Layout, slots: int, last: bool) -> list[DiagStep]:
    n_out = seg.n_out
    out: list[DiagStep] = []
    configs = []
    P_out = next_pow2(n_out)
    P = max(lin.period, P_out)
    if P <= slots:
        configs.append(("compact", P, np.arange(n_out), P_out, P // P_out, P_out))
    m = 2
    while lin.period * m <= slots and not last:
        q = next_pow2(-(-n_out // m))
        if q <= lin.period and q < P_out:
            P = lin.period * m
            R = np.arange(n_out)
            configs.append((f"copies{m}", P, (R // q) * lin.period + R % q, q, lin.period // q, q))
        if q == 1:
            break  # more copies cannot reduce the diagonals further
        m *= 2
    for name, P, o, step, count, J in configs:
        in_idx = lin.tiled(P)
        owner = np.full(P, -1, dtype=np.int64)
        offsets = np.arange(count) * step
        slots_of = (o[:, None] + offsets[None, :]) % P
        if len(np.unique(slots_of)) != slots_of.size:
            continue
        owner[slots_of.reshape(-1)] = np.repeat(np.arange(n_out), count)
        got = _assign(seg.pattern, in_idx, owner, J)
        if got is None:
            continue
        rows, cols = got
        layout = _fold_layout(rows, owner, offsets)
        if last and layout.has_garbage:
            continue
        fold = [step << k for k in range(int(math.log2(count)))]
        st = DiagStep(name, P, 1, 1, rows, cols, fold, layout)
        st.n1, st.n2 = _bsgs(st.used_j(), J)
        st.cost = (len(_baby_order(st.babies())) + max(st.giants(), default=0) + len(fold)) * C_ROT \
            + len(st.used_j()) * C_MUL
        out.append(st)
    return out


#: the channel packing replaces a feasible one-ciphertext plan only when the cost model expects it to be
#: clearly cheaper (the literature's one-convolution networks keep their tuned plans)
MULTI_ADVANTAGE = 0.5


def plan_latency(prog: Program, slots: int) -> LatencyPlan:
    """The structural plan (layouts, rotations, client gathers): a function of the public program only.
    Chooses between the one-ciphertext plan below and the channel packing of `convpack`."""
    mode = getattr(prog, "conv_packing", "auto")
    if mode not in ("auto", "on", "off"):
        raise ParameterError(f"conv_packing must be 'auto', 'on' or 'off', got {mode!r}")
    cache = prog.__dict__.setdefault("_plan_cache", {})  # plans are pure functions of (program, slots, mode)
    key = (slots, mode)
    if key not in cache:
        try:
            cache[key] = _choose_plan(prog, slots, mode)
        except ParameterError as e:
            cache[key] = e
    if isinstance(cache[key], ParameterError):
        raise cache[key]
    return cache[key]


def _choose_plan(prog: Program, slots: int, mode: str) -> LatencyPlan:
    from .convpack import plan_cost, plan_multi
    single = err = None
    try:
        single = _plan_single(prog, slots)
    except ParameterError as e:
        err = e
    multi = plan_multi(prog, slots) if mode != "off" else None
    if multi is not None and (single is None or mode == "on"
                              or plan_cost(multi) < MULTI_ADVANTAGE * plan_cost(single)):
        from .rotkeys import limit_keys
        return limit_keys(multi, prog)
    if single is None:
        raise err
    return single


def _plan_single(prog: Program, slots: int) -> LatencyPlan:
    segs_ops = prog.ops
    if prog.max_dim() > slots:
        raise ParameterError(f"a vector of {prog.max_dim()} values does not fit {slots} slots")
    first = segs_ops[0]
    n_seg = len(prog.segments)
    # option A: client-side gather for the first segment
    gather = _gather_step(first, slots)
    cost_gather = gather.n_ct * (C_CT + C_MUL) + len(gather.fold) * C_ROT
    # option B: one replicated input ciphertext, first segment by the diagonal method
    P_in = next_pow2(prog.input_dim)
    in_layout = Layout(P_in, np.where(np.arange(P_in) < prog.input_dim, np.arange(P_in), ZERO))
    diag_first = []
    if gather.n_ct > 2:
        diag_first = _diag_candidates(first, in_layout, slots, last=(n_seg == 1))
    best_b = min(diag_first, key=lambda s: s.cost) if diag_first else None
    if best_b is not None and best_b.cost + C_CT < cost_gather:
        plan = LatencyPlan(slots, InputSpec(in_layout.tiled(slots)[None, :]), [best_b], prog.output_dim)
        layout = best_b.out
    else:
        plan = LatencyPlan(slots, InputSpec(gather.gather), [gather], prog.output_dim)
        layout = gather.out
    seg_i = 1
    ops = segs_ops[1:]
    for pos, op in enumerate(ops):
        if isinstance(op, Activation):
            plan.steps.append(ActStep(op.kind, float(op.const)))
            continue
        last = seg_i == n_seg - 1
        cands = _diag_candidates(op, layout, slots, last)
        if not cands:
            raise ParameterError(f"no packing found for segment {op.names} ({op.n_out}x{op.n_in}) in {slots} slots")
        nxt = next((o for o in ops[pos + 1:] if isinstance(o, Affine)), None)

        def total(c):
            if nxt is None:
                return c.cost
            follow = _diag_candidates(nxt, c.out, slots, seg_i + 1 == n_seg - 1)
            return c.cost + (min(f.cost for f in follow) if follow else 1e9)
        best = min(cands, key=total) if len(cands) > 1 else cands[0]
        plan.steps.append(best)
        layout = best.out
        seg_i += 1
    return plan


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
                from .convpack import compile_rot
                compile_rot(item, st, seg, backend, S, p_scale, level)
            elif isinstance(st, GatherStep):
                for c in range(st.n_ct):
                    r, g = st.rows[c], st.gather[c]
                    w = np.where(r >= 0, seg.A[np.maximum(r, 0), np.maximum(g, 0)], 0.0)
                    item.pts[c] = backend.encode(w, p_scale, level)
            else:
                P = st.period
                for j in st.used_j():
                    a, b = divmod(j, st.n1)
                    r, k = st.rows[j], st.cols[j]
                    d = np.where(r >= 0, seg.A[np.maximum(r, 0), np.maximum(k, 0)], 0.0)
                    d = np.roll(np.tile(d, S // P), a * st.n1)
                    item.pts[(a, b)] = backend.encode(d, p_scale, level)
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

    def evaluate(self, cts: list, trace: list | None = None, backend=None, all_outputs: bool = False):
        """Run the plan on the input ciphertexts (or vectors); `backend` overrides the compile-time one
        (the server compiles plaintexts once and evaluates with each connection's keys). A value is a list
        of ciphertexts (one, except between channel-packed segments); `all_outputs` returns the whole list
        (a masked hybrid segment may end on several)."""
        be = backend or self.backend
        if self.plan.key_paths:
            from .rotkeys import ComposedRotations
            be = ComposedRotations(be, self.plan.key_paths, self.plan.slots)
        xs = None
        for item in self.items:
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
                from .convpack import evaluate_rot
                xs = [self._finish(be, acc, [], bias)
                      for acc, bias in zip(evaluate_rot(be, st, item.pts, xs if xs is not None else cts), item.bias)]
            elif item.kind == "gather":
                acc = None
                for c in range(st.n_ct):
                    t = be.mul_plain(cts[c], item.pts[c])
                    acc = t if acc is None else be.add(acc, t)
                xs = [self._finish(be, acc, st.fold, item.bias[0])]
            else:
                src = xs[0] if xs is not None else cts[0]
                babies = {0: src}
                for b in _baby_order(st.babies()):
                    hb = 1 << (b.bit_length() - 1)
                    babies[b] = be.rotate(babies[b - hb], hb)
                inners: dict[int, object] = {}
                for (a, b), pt in item.pts.items():
                    t = be.mul_plain(babies[b], pt)
                    inners[a] = t if a not in inners else be.add(inners[a], t)
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
