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

import math

import numpy as np

from ...errors import ParameterError
# the plan's types and its evaluator live in latency_plan / latency_eval; their names stay importable from here
from .latency_eval import CompiledPlan, NumpyBackend, SealBackend, client_vectors, simulate  # noqa: F401
from .latency_plan import (C_CT, C_MUL, C_ROT, GARBAGE, ZERO, ActStep, DiagStep, GatherStep, InputSpec,  # noqa: F401
                           LatencyPlan, Layout, _baby_order, next_pow2)
from .program import Activation, Affine, Program

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
    choices = getattr(prog, "plan_choices", None)  # the server's decisions, replayed (client set-up)
    key = (slots, mode, repr(choices))
    if key not in cache:
        try:
            cache[key] = _choose_plan(prog, slots, mode, choices)
        except ParameterError as e:
            cache[key] = e
    if isinstance(cache[key], ParameterError):
        raise cache[key]
    return cache[key]


def _choose_plan(prog: Program, slots: int, mode: str, choices: dict | None = None) -> LatencyPlan:
    from .convpack_plan import plan_cost, plan_multi
    from .rotkeys import limit_keys
    if choices is not None:
        if mode == "off":
            raise ParameterError("packing choices given with conv_packing='off'")
        multi = plan_multi(prog, slots, choices=choices)
        if multi is None:
            raise ParameterError("the packing choices give no plan for this network")
        return limit_keys(multi, prog)
    single = err = None
    try:
        single = _plan_single(prog, slots)
    except ParameterError as e:
        err = e
    multi = plan_multi(prog, slots) if mode != "off" else None
    if multi is not None and (single is None or mode == "on"
                              or plan_cost(multi) < MULTI_ADVANTAGE * plan_cost(single)):
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
