"""Planning the channel packing (`convpack.py`): the client's input grid, each segment's output layout, the
LoLa-style doubled channels and folds, and the last segment that writes each result once.

Why apart from `convpack.py`: that module is the packing itself (layouts, `RotStep`, its evaluation and
plaintexts); this one chooses among its options with the cost model, greedily over segments with a one-segment
lookahead, for each candidate input grid (`plan_multi`). Both client and server run it on the public structure
only, so they derive the same plan.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ParameterError, ShapeError
from .convpack import C_KEY, Grid, RotStep, rot_step
from .latency import C_CT, C_MUL, C_ROT, ZERO, ActStep, InputSpec, Layout, LatencyPlan, _diag_candidates, next_pow2
from .program import Activation, Affine, Program


def _mergeable(seg: Affine, grid: Grid | None) -> int:
    """k when `seg` starts with AvgPool(k, stride k, no padding) on a grid of phases (k, k): else 0."""
    if grid is None or seg.lead_pool is None or grid.packed:
        return 0
    (kh, kw), (sh, sw), pad = seg.lead_pool
    if kh == kw == sh == sw == grid.ph == grid.pw and not any(pad) and grid.H % kh == 0 and grid.W % kw == 0:
        return kh
    return 0


def _merge(seg: Affine, grid: Grid, slots: int):
    """(pattern on the merged tensor, its columns of A, multiplier, pooled grid, merged ciphertext count)."""
    k = grid.ph
    C, Hp, Wp = grid.C, grid.H // k, grid.W // k
    c, Y, X = np.meshgrid(np.arange(C), np.arange(Hp), np.arange(Wp), indexing="ij")
    cols = ((c * grid.H + k * Y) * grid.W + k * X).ravel()
    pooled = Grid(C, Hp, Wp, 1, 1, grid.ry, grid.rx, grid.Bk, dup=grid.dup)
    n_ct = grid.idx(slots).shape[0] // (k * k)
    return seg.pattern[:, cols], cols, 1.0, pooled, n_ct  # merged = k² x pooled, A[:, cols] = A_pool / k²


def _next_pool(segs: list[Affine], i: int, shape) -> int:
    if i + 1 >= len(segs) or segs[i + 1].lead_pool is None or len(shape) != 3:
        return 1
    (kh, kw), (sh, sw), pad = segs[i + 1].lead_pool
    ok = kh == kw == sh == sw and not any(pad) and shape[1] % kh == 0 and shape[2] % kw == 0
    return kh if ok else 1


def _out_grid(seg: Affine, grid: Grid | None, p_o: int, slots: int, dup: int = 1) -> Grid | None:
    C, H, W = seg.out_shape
    if grid is not None and len(seg.convs) == 1:
        (sy, sx) = seg.convs[0][1]
        num_y, num_x = sy * p_o * grid.ry, sx * p_o * grid.rx
        if num_y % grid.ph == 0 and num_x % grid.pw == 0:
            g = Grid(C, H, W, p_o, p_o, num_y // grid.ph, num_x // grid.pw, grid.Bk, dup=dup)
            if g.fits(slots):
                return g
    if dup != 1:
        return None
    gw = next_pow2(-(-W // p_o))
    g = Grid(C, H, W, p_o, p_o, gw, 1, next_pow2(-(-H // p_o) * gw))
    return g if g.fits(slots) else None


def input_grid(prog: Program, slots: int) -> Grid | None:
    """The client's layout of the image: phases stride x (next pool), packed and replicated if it fits."""
    grids = input_grids(prog, slots)
    return grids[0] if grids else None


def input_grids(prog: Program, slots: int) -> list[Grid]:
    """The client's candidate layouts of the image: phases stride x (next pool), packed and replicated if it
    fits, in blocks no smaller than needed to fill the slots with the widest layer's channels (channel shifts
    then wrap exactly: fewer distinct rotations); and, where they fit, blocks half that size, so that later
    layers can hold each channel twice (`Grid.dup`)."""
    segs = prog.segments
    first = segs[0]
    if len(first.in_shape) != 3 or len(first.convs) != 1:
        return []
    C, H, W = first.in_shape
    s = first.convs[0][1][0] if first.convs[0][1][0] == first.convs[0][1][1] else 1
    p = s * _next_pool(segs, 0, first.out_shape)
    gw = next_pow2(-(-W // p))
    widest = max([s_.out_shape[0] for s_ in segs if len(s_.out_shape) == 3] + [C])
    need = next_pow2(-(-H // p) * gw)
    out = []
    for Bk in sorted({max(need, slots // next_pow2(widest)), max(need, slots // (2 * next_pow2(widest)))},
                     reverse=True):
        for packed in (True, False):
            g = Grid(C, H, W, p, p, gw, 1, Bk, packed)
            if g.fits(slots):
                out.append(g)
                break
    return out


@dataclass
class _State:
    idx: np.ndarray | None          # (n_ct, slots) while the value is a Grid / multi-ciphertext
    layout: Layout | None           # one-ciphertext layout (then the diagonal method takes over)
    grid: Grid | None


def _candidates(op: Affine, st: _State, segs: list, seg_i: int, slots: int, first: bool,
                multi_out: bool = False, pick: int | None = None) -> list:
    """(step, next state, option index) options for one segment; `pick`: build only that option (the index is
    stable: a plan's `choices` replay it without the cost of building the others)."""
    last = seg_i == len(segs) - 1 and not multi_out
    if st.layout is not None and last:  # one compact copy of the result, nothing else: the mask folds in
        r = _final_rot(op, st.layout.tiled(slots)[None, :], slots)
        return [(r, _State(r.out_idx, r.out, None), 0)]
    if st.layout is not None:
        return [(d, _State(None, d.out, None), i) for i, d in enumerate(_diag_candidates(op, st.layout, slots, last))
                if pick is None or i == pick]
    pattern, cols, merge, in_grid, x_idx = op.pattern, None, 1, st.grid, st.idx
    k = _mergeable(op, st.grid)
    if k:
        pattern, cols, _, in_grid, _ = _merge(op, st.grid, slots)
        merge, x_idx = k * k, in_grid.idx(slots)
    outs = []
    if len(op.out_shape) == 3 and not last:
        # every channel twice (`Grid.dup`) when a convolution follows: it can then fold (below)
        nxt_conv = seg_i + 1 < len(segs) and len(segs[seg_i + 1].convs) == 1 and in_grid is not None
        for p_o in sorted({1, _next_pool(segs, seg_i, op.out_shape)}):
            for dup in ((1, 2) if nxt_conv else (1,)):
                g = _out_grid(op, in_grid, p_o, slots, dup)
                if g is None:
                    continue
                outs.append((g, g.idx(slots), 0))
                if dup == 1 and in_grid is not None and in_grid.dup == 2 and g.Bk == in_grid.Bk:
                    # LoLa: the input's second copy is rotated by half the channels, so an output summed from two
                    # slots half the ring apart needs half the channel shifts (giants) and half the plaintexts
                    outs.append((g, g.idx(slots), slots // 2))
    elif op.n_out <= slots:
        idx = np.full((1, slots), ZERO, dtype=np.int64)
        idx[0, :op.n_out] = np.arange(op.n_out)
        outs.append((None, idx, 0))
    if last:  # see `clean_output`
        outs = [o for o in outs if o[0] is None]
    res = []
    for i, (g, out_idx, fold) in enumerate(outs):
        if pick is not None and i != pick:
            continue
        try:
            step = rot_step(pattern, x_idx, out_idx, merge=merge, cols=cols, grid=g, fold=fold)
        except ShapeError:
            continue  # (a fold whose partner slots collide)
        if first:
            step.cost += x_idx.shape[0] * C_CT
        one = step.n_out == 1 and g is None
        res.append((step, _State(step.out_idx, step.out if one else None, g), i))
    if x_idx.shape[0] == 1 and merge == 1 and not first and len(op.out_shape) != 3 and not last \
            and (pick is None or pick >= len(outs)):
        lay = Layout(slots, x_idx[0].copy()).compressed()
        diags = _diag_candidates(op, lay, slots, last)
        res += [(d, _State(None, d.out, None), len(outs) + i) for i, d in enumerate(diags)
                if pick is None or len(outs) + i == pick]
    return res


def _final_rot(op: Affine, in_idx: np.ndarray, slots: int) -> RotStep:
    """The last segment as a `RotStep` writing each result exactly once, at slots 0..n_out-1."""
    idx = np.full((1, slots), ZERO, dtype=np.int64)
    idx[0, :op.n_out] = np.arange(op.n_out)
    return rot_step(op.pattern, in_idx, idx)


def clean_output(plan: LatencyPlan) -> bool:
    """True when the plan's result is one ciphertext holding each output in exactly one slot, and every other
    slot receives only products by plaintext slots that encode 0 (a channel-packed plan's last `RotStep`): the
    server's 0/1 output mask is then already in the last segment's plaintexts (`params`: fast mode gives it no
    bits of its own)."""
    last = [s for s in plan.steps if not isinstance(s, ActStep)][-1]
    return isinstance(last, RotStep) and last.n_out == 1 and last.merge == 1 \
        and int((last.out_idx >= 0).sum()) == plan.n_out


def plan_multi(prog: Program, slots: int, multi_out: bool = False, choices: dict | None = None) -> LatencyPlan | None:
    """A channel-packed plan, or None when the network does not start with a convolution or cannot fit.
    Greedy over segments with a one-segment lookahead on the cost model, for each candidate input grid.
    `multi_out`: the last segment may leave its result over several ciphertexts (a hybrid segment whose result
    is masked into shares). `choices` (a plan's `choices`, sent in WELCOME): replay those decisions, building
    one option per segment (the client's set-up: a fraction of the search; the plan digest still checks it)."""
    cache = prog.__dict__.setdefault("_multi_cache", {})
    key = (slots, multi_out, repr(choices))
    if key not in cache:
        cache[key] = _plan_multi(prog, slots, multi_out, choices)
    return cache[key]


def _plan_multi(prog: Program, slots: int, multi_out: bool = False, choices: dict | None = None):
    grids = input_grids(prog, slots)
    if choices is not None:
        try:
            gi, picks = int(choices["grid"]), [int(c) for c in choices["segments"]]
        except (KeyError, TypeError, ValueError):
            raise ParameterError(f"malformed packing choices {choices!r}") from None
        if not 0 <= gi < len(grids) or len(picks) != len(prog.segments):
            raise ParameterError("the packing choices do not fit this network")
        return _plan_grid(prog, slots, grids[gi], multi_out, picks, gi)
    plans = [p for p in (_plan_grid(prog, slots, g, multi_out, None, i) for i, g in enumerate(grids)) if p is not None]
    return min(plans, key=plan_cost) if plans else None


def _plan_grid(prog: Program, slots: int, grid: Grid, multi_out: bool, picks: list | None,
               grid_i: int) -> LatencyPlan | None:
    segs = prog.segments
    in_idx = grid.idx(slots)
    plan = LatencyPlan(slots, InputSpec(in_idx.copy()), [], prog.output_dim)
    plan.choices = {"grid": grid_i, "segments": []}
    state = _State(in_idx, None, grid)
    seg_i = 0
    ahead: dict = {}  # id(state) -> its candidates for the next segment (the lookahead computes them once)
    for op in prog.ops:
        if isinstance(op, Activation):
            plan.steps.append(ActStep(op.kind, float(op.const)))
            continue
        if picks is not None:
            cands = _candidates(op, state, segs, seg_i, slots, seg_i == 0, multi_out, pick=picks[seg_i])
            if len(cands) != 1:
                raise ParameterError(f"packing choice {picks[seg_i]} does not exist for segment {seg_i}")
        else:
            cands = ahead.get(id(state))
            if cands is None:
                cands = _candidates(op, state, segs, seg_i, slots, seg_i == 0, multi_out)
        ahead = {}
        if not cands:
            return None
        if len(cands) > 1 and seg_i + 1 < len(segs):
            def total(c):
                nxt = ahead[id(c[1])] = _candidates(segs[seg_i + 1], c[1], segs, seg_i + 1, slots, False, multi_out)
                return c[0].cost + c[0].n_out * C_ROT * (getattr(c[0], "n_out", 1) > 1) \
                    + (min(n[0].cost for n in nxt) if nxt else 1e12)
            step, state, pick = min(cands, key=total)
        else:
            step, state, pick = min(cands, key=lambda c: c[0].cost)
        plan.steps.append(step)
        plan.choices["segments"].append(pick)
        seg_i += 1
    if not multi_out:
        check_plan(plan)
    return plan


def plan_cost(plan: LatencyPlan) -> float:
    """The cost model's estimate (ms-equivalent at N=8192) of one plan: steps, uploads and keys."""
    cost = plan.input.n_ct * C_CT + len(plan.rotation_steps) * C_KEY
    n_ct = plan.input.n_ct
    for st in plan.steps:
        if isinstance(st, ActStep):
            cost += n_ct * C_ROT
            continue
        cost += getattr(st, "cost", 0.0)
        if isinstance(st, RotStep):
            n_ct = st.n_out
        elif st.kind == "gather":
            cost += st.n_ct * C_MUL + len(st.fold) * C_ROT
            n_ct = 1
        else:
            n_ct = 1
    return cost


def check_plan(plan: LatencyPlan) -> None:
    """Raise unless the plan's final value is one ciphertext."""
    last = [s for s in plan.steps if not isinstance(s, ActStep)][-1]
    if isinstance(last, RotStep) and last.n_out != 1:
        raise ParameterError("the last segment must produce one ciphertext")


__all__ = ["plan_multi", "clean_output", "plan_cost", "input_grid", "input_grids", "check_plan"]
