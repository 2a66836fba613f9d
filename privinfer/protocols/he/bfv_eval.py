"""A linear-only HE segment in BFV: integer weights, the `latency`/`convpack` packing plans, SEAL evaluation.

Plans: a segment of one conv2d or linear layer normally runs the lane packing of `bfv_pack.py` (BFV only:
both rows, lanes summed by the client as shares); any other linear segment runs the CKKS packing code
(`latency.py`, `convpack.py`), which is written against a small backend interface (encode, mul_plain, add,
rotate, ...). `BFVBackend` implements it on BFV ciphertexts, for both: `CompiledPlan` runs unchanged on a
program whose matrix and bias are the quantized integers A_int = round(A 2^w), b_int = round(b 2^(FRAC_BITS + w))
(scales and rescales are then no-ops). `choose_plan` picks by the cost model, from public information only.

Speed: SEAL's BFV `multiply_plain` on a coefficient-form ciphertext transforms both operands to NTT form on
every call. Here weight plaintexts are kept in NTT form (transformed once, at compile time), each ciphertext
is transformed once however many plaintexts multiply it (`_Ct` caches both forms), and products are summed in
NTT form; rotations and plaintext additions switch back to coefficient form (BFV key switching needs it).

Sizing (`BFVSegment`): the weight scale w starts at 16 bits (CrypTen's own) and is lowered until the sound
bound on |A_int x_int + b_int| over the segment's input box (`model.bounds.input_box`, plus the conversion's
rounding slack) fits a plaintext modulus t under which the noise flood still fits (`bfv.py`: 2 log2 t plus
log2 of the products summed must stay below about 92 bits).
"""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import tenseal.sealapi as seal

from ...errors import ParameterError, ShapeError, UnsupportedLayerError
from ...model.bounds import input_box
from ...model.ir import Graph
from .bfv import FRAC_BITS, N_DEFAULT, BFVContext, BFVParams, choose_params, noise_bits
from .bfv_pack import PackCompiled, PackPlan, plan_pack, weights
from .convpack import RotStep, plan_cost, plan_multi
from .latency import ActStep, CompiledPlan, DiagStep, GatherStep, LatencyPlan, client_vectors, plan_latency
from .latency_plan import C_ROT
from .program import Affine, Program, build_program

#: weights at 2^-w: from CrypTen's 16 bits down to 12 (coarser grids cost more than 1e-2 on the logits of the
#: zoo networks; such a segment is refused here and `hybrid` falls back to CKKS unless hiding='perfect')
MAX_WEIGHT_BITS, MIN_WEIGHT_BITS = 16, 12
UPLOAD_COST = 12.0   # ms-equivalent per uploaded BFV ciphertext beyond the cost model's C_CT
SLACK_UNITS = 64.0   # |ring value - x 2^16| the 2PC's truncations and the lift may add (units of 2^-16)


class _Pt:
    """A weight plaintext: coefficient form for additions, NTT form (made once) for products."""
    __slots__ = ("pt", "ntt")

    def __init__(self, pt):
        self.pt, self.ntt = pt, None


class _Ct:
    """A BFV ciphertext in coefficient form (`c`) and/or NTT form (`n`), each made at most once."""
    __slots__ = ("c", "n")

    def __init__(self, c=None, n=None):
        self.c, self.n = c, n


class BFVBackend:
    """The `latency.CompiledPlan` backend interface on BFV ciphertexts (see the module docstring)."""

    def __init__(self, ctx: BFVContext):
        self.ctx, self.ev = ctx, ctx.evaluator

    def encode(self, values, scale, level):
        return _Pt(self.ctx.encode(np.asarray(values, dtype=np.float64)))

    def prepare(self, p: _Pt) -> None:
        if p.ntt is None:
            p.ntt = seal.Plaintext()
            self.ev.transform_to_ntt(p.pt, self.ctx.parms_ids[0], p.ntt)
            p.pt = None  # products only: the coefficient form is not needed again

    def _coeff(self, x: _Ct):
        if x.c is None:
            x.c = seal.Ciphertext()
            self.ev.transform_from_ntt(x.n, x.c)
        return x.c

    def _ntt(self, x: _Ct):
        if x.n is None:
            x.n = seal.Ciphertext()
            self.ev.transform_to_ntt(x.c, x.n)
        return x.n

    def mul_plain(self, x: _Ct, p: _Pt):
        self.prepare(p)
        out = seal.Ciphertext()
        self.ev.multiply_plain(self._ntt(x), p.ntt, out)
        return _Ct(n=out)

    def add(self, a: _Ct, b: _Ct):
        if a.c is None and b.c is None:
            self.ev.add_inplace(a.n, b.n)
            return a
        c = self._coeff(a)
        self.ev.add_inplace(c, self._coeff(b))
        a.n = None
        return a

    def add_plain(self, x: _Ct, p: _Pt):
        c = self._coeff(x)
        self.ev.add_plain_inplace(c, p.pt)
        x.n = None
        return x

    def rotate(self, x: _Ct, k: int):
        out = seal.Ciphertext()
        self.ev.rotate_rows(self._coeff(x), int(k), self.ctx.galois_keys, out)
        return _Ct(c=out)

    def rescale(self, x):
        return x

    mod_switch = rescale

    def square(self, x):
        raise UnsupportedLayerError("a BFV segment is linear only")

    multiply = square

    def result(self, x: _Ct):
        return self._coeff(x)


def plan_bfv(prog: Program, slots: int) -> LatencyPlan:
    """The cheaper of the one-ciphertext plan and the channel packing (which may leave several result
    ciphertexts: a masked result need not fit one), uploads weighted more than CKKS's cost model does."""
    cands = []
    try:
        cands.append(plan_latency(prog, slots))
    except ParameterError as e:
        err = e
    multi = plan_multi(prog, slots, multi_out=True)
    if multi is not None:
        cands.append(multi)
    if not cands:
        raise err
    return min(cands, key=lambda p: plan_cost(p) + UPLOAD_COST * p.input.n_ct)


def choose_plan(graph: Graph) -> LatencyPlan | PackPlan:
    """The segment's plan, a function of the public architecture only (client and server derive the same):
    the lane packing (`bfv_pack.py`) for one conv2d / linear layer, else the CKKS packing plans on BFV; the
    cheaper by the cost model (in rotations)."""
    prog = linear_program(graph)
    pack = plan_pack(graph, N_DEFAULT)
    try:
        legacy = plan_bfv(prog, N_DEFAULT // 2)
    except ParameterError:
        if pack is None:
            raise
        return pack
    if pack is not None and pack.cost < (plan_cost(legacy) + UPLOAD_COST * legacy.input.n_ct) / C_ROT:
        return pack
    return legacy


def compile_plan(plan, program: Program, backend):
    """The plan with its weight plaintexts encoded by `backend` (a `BFVBackend`, or the planner's counter)."""
    if isinstance(plan, PackPlan):
        op = program.ops[0]
        return PackCompiled(plan, weights(plan.st, op.A), op.b, backend)
    return CompiledPlan(plan, program, backend)


def output_positions(plan) -> tuple[np.ndarray, np.ndarray]:
    """(ciphertext, slot) arrays of shape (n_out, L): every output element is the sum (mod t) of its L slots
    (L lanes of partial sums in a lane-packed plan; L = 1, the first copy, otherwise)."""
    if isinstance(plan, PackPlan):
        return plan.positions()
    ci, si = _first_copies(plan)
    return ci[:, None], si[:, None]


def _first_copies(plan: LatencyPlan) -> tuple[np.ndarray, np.ndarray]:
    last = [s for s in plan.steps if not isinstance(s, ActStep)][-1]
    if isinstance(last, RotStep):
        idx = last.out_idx
        flat = idx.reshape(-1)
        pos = np.full(plan.n_out, -1, dtype=np.int64)
        where = np.flatnonzero(flat >= 0)[::-1]
        pos[flat[where]] = where
        return pos // idx.shape[1], pos % idx.shape[1]
    return np.zeros(plan.n_out, dtype=np.int64), plan.output_slots()


def n_output_cts(plan) -> int:
    if isinstance(plan, PackPlan):
        return plan.n_oc
    last = [s for s in plan.steps if not isinstance(s, ActStep)][-1]
    return last.n_out if isinstance(last, RotStep) else 1


def product_terms(plan) -> int:
    """How many plaintext products (counting fold doublings and merged inputs) sum into one result slot, at
    most: the factor of the noise bound."""
    if isinstance(plan, PackPlan):
        return plan.product_terms()
    n = 0
    for st in plan.steps:
        if isinstance(st, RotStep):
            n = max(n, len(st.keys) * st.merge)
        elif isinstance(st, GatherStep):
            n = max(n, st.n_ct * 2 ** len(st.fold))
        elif isinstance(st, DiagStep):
            n = max(n, len(st.used_j()) * 2 ** len(st.fold))
    return n


def baby_depth(plan) -> int:
    """The most key switches on a path from an input ciphertext to a plaintext product (baby-step chains,
    times the longest composition of a rotation from keyed steps): their errors get multiplied."""
    if isinstance(plan, PackPlan):
        return 0  # every rotation comes after the products
    depth = 0
    for st in plan.steps:
        if isinstance(st, RotStep):
            for c in range(st.n_in):
                d = {0: 0}
                for b, prev, _ in st.baby_chain(c):
                    d[b] = d[prev] + 1
                depth = max(depth, max(d.values()))
        elif isinstance(st, DiagStep):
            depth = max([depth] + [bin(b).count("1") for b in st.babies()])
    return depth * max([1] + [len(p) for p in plan.key_paths.values()])


def linear_program(graph: Graph) -> Program:
    prog = build_program(graph)
    if len(prog.ops) != 1 or not isinstance(prog.ops[0], Affine):
        raise UnsupportedLayerError("a BFV segment holds linear layers only (conv2d, linear, avgpool2d, flatten)")
    return prog


def value_bound(A: np.ndarray, b: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """max |A x + b| over the box (interval arithmetic, exact for an affine map up to float rounding)."""
    c, r = (lo + hi) / 2, (hi - lo) / 2
    return float(np.max(np.abs(A @ c + b) + np.abs(A) @ r))


class BFVSegment:
    """Server side of one BFV segment: the quantized program, its plan, parameters and compiled weights."""

    def __init__(self, graph: Graph, start: int, stop: int, weight_bits: int | None = None):
        self.graph = graph.slice(start, stop)
        prog = linear_program(self.graph)
        if graph.input_range is None:
            raise ParameterError("a BFV segment needs the model's published input_range: its plaintext modulus is "
                                 "sized from a sound bound on the values")
        seg = prog.ops[0]
        lo, hi = input_box(graph, start)
        unit = 2.0 ** FRAC_BITS
        xlo, xhi = np.floor(lo * unit) - SLACK_UNITS, np.ceil(hi * unit) + SLACK_UNITS
        in_bound = float(max(np.abs(xlo).max(), np.abs(xhi).max()))
        self.plan = choose_plan(self.graph)
        terms, depth = product_terms(self.plan), baby_depth(self.plan)
        err = None
        for w in range(weight_bits or MAX_WEIGHT_BITS, MIN_WEIGHT_BITS - 1, -1):
            A = np.rint(seg.A * 2.0 ** w)
            b = np.rint(seg.b * 2.0 ** (w + FRAC_BITS))
            bound = max(value_bound(A, b, xlo, xhi) * (1 + 1e-9) + 1.0, in_bound)
            try:  # t must hold the values: else a coarser weight grid
                params = choose_params(bound)
                ctx = BFVContext.for_params(params)
                nb = noise_bits(params.t, terms, depth)
                level = ctx.out_level(nb)
                break
            except ParameterError as e:
                err = e
                if weight_bits is not None:
                    raise
        else:
            raise ParameterError(f"BFV segment {start}-{stop - 1}: its values (up to {bound:.3g} slot units) leave no "
                                 f"room for weights finer than 2^-{MIN_WEIGHT_BITS} ({err})")
        self.weight_bits, self.bound, self.params, self.ctx = w, bound, params, ctx
        self.noise_bits, self.out_level = nb, level
        self.circuit_bits = max(0.0, ctx.stat_bits(nb))  # what the flood buys against the worst-case noise bound
        self.program = Program([replace(seg, A=A, b=b)], prog.input_dim, prog.output_dim, prog.conv_packing)
        be = BFVBackend(self.ctx)
        self.compiled = compile_plan(self.plan, self.program, be)
        pts = (self.compiled.weight_plaintexts() if isinstance(self.plan, PackPlan)
               else [p for item in self.compiled.items for p in item.pts.values()])
        for p in pts:
            be.prepare(p)
        self.positions = output_positions(self.plan)
        self.n_out_ct = n_output_cts(self.plan)

    def evaluate(self, ctx: BFVContext, cts: list) -> list:
        """The segment on the client's ciphertexts (coefficient form, top level): its result ciphertexts."""
        be = BFVBackend(ctx)
        outs = self.compiled.evaluate([_Ct(c=c) for c in cts], backend=be, all_outputs=True)
        return [be.result(o) for o in outs]

    def stream(self, ctx: BFVContext):
        """The evaluation fed one input ciphertext at a time, `add(i, ct)` as each arrives, then `result()`:
        a lane-packed plan multiplies each input when it comes; other plans evaluate when all have come."""
        return _Stream(self, ctx)

    def input_vectors(self, values: np.ndarray) -> np.ndarray:
        """The slot vectors (n_ct, slots) of one flat input: the client's gather (`latency.client_vectors`)."""
        return client_vectors(self.plan, values)


class _Stream:
    """`BFVSegment.stream`: see there."""

    def __init__(self, seg: BFVSegment, ctx: BFVContext):
        self.seg, self.ctx, self.be = seg, ctx, BFVBackend(ctx)
        self.acc = seg.compiled.accumulator(self.be) if isinstance(seg.plan, PackPlan) else None
        self.cts: dict = {}

    def add(self, i: int, ct) -> None:
        if self.acc is not None:
            self.acc.add(i, _Ct(c=ct))
        elif i in self.cts:
            raise ShapeError(f"input ciphertext {i} given twice")
        else:
            self.cts[i] = ct

    def result(self) -> list:
        if self.acc is not None:
            return [self.be.result(o) for o in self.acc.result()]
        return self.seg.evaluate(self.ctx, [self.cts[i] for i in sorted(self.cts)])
