"""The scale/level planner of the CryptoNets batch engine (`batch.py`); the stages it plans over (graph
normalization, integer linear operators, value bounds) are in `batch_stages.py`.

Scale management without rescaling linear layers. Weights are quantized as round(w * rho) and the
ciphertext scale is multiplied by rho, so a linear layer costs no level; only ciphertext x ciphertext
products (Poly layers) square the scale. Rescales (dropping the last RNS prime, dividing the scale by it)
are placed lazily: on a Poly layer's input and on the outputs, where they are cheapest and where a prime
removed *before* a square frees twice its bits. Which primes are dropped where, and every rho, are chosen
together by a small mixed-integer LP over log2 scales:

  maximize t  subject to
    t <= log2(rho_i * max|W_i|)                 every weighted layer gets >= t bits of weight precision
    log2(S) + log2(B) <= log2(Q_level) - margin  no overflow anywhere (B: bound on |values| there)
    log2(S) >= floor                             enough scale after each rescale / at the outputs
    limb width of each layer's integer weights >= MIN_LIMB_BITS

then, among plans within half a bit of the best t, the cheapest by a rough cost model. Bounds B are
interval bounds for inputs in [-input_bound, input_bound] (guaranteed, pessimistic), or measured on
calibration inputs times a safety factor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ...errors import ParameterError
# the stage algebra lives in batch_stages; its names stay importable from here (`bp.normalize`, ...)
from .batch_stages import (MIN_LIMB_BITS, POLY_COEF_BITS, Stage, build_int_linear, conv_blocks,  # noqa: F401
                           normalize, set_bounds, stage_forward)

PRECISION_CAP = 22.0  # bits of weight precision beyond which nothing is gained
PREC_TARGET = 16.0  # bits of weight precision the cost-minimizing pass keeps (when reachable)
# A rescale leaves a rounding error r0 + r1*s (|r| <= 1/2, s ternary) of ~0.25 N in slot units (~4x that at
# the worst slot), i.e. log2(N) + 1 bits; the scale floors keep this 2^-15 (poly inputs, whose values are
# then squared) or 2^-17 (outputs, absolute) below 1.
FLOOR_POLY_IN = 15.0  # + log2(N) + 1: log2 scale floor at a Poly input (after its rescales)
FLOOR_OUT = 17.0  # + log2(N) + 1: log2 scale floor of the outputs
MARGIN_BITS = 2.0  # headroom between S * B and Q / 2
# HiGHS's presolve prints a stray debug line to stdout on some of these small MILPs; they need none
_MILP_OPTS = {"presolve": False, "disp": False}


# ---------------------------------------------------------------------------------------------
# the scale / level planner
# ---------------------------------------------------------------------------------------------
@dataclass
class Plan:
    """Decisions for one (graph, parameters, input level/scale) combination."""
    log_rho: list  # per stage: log2 rho for weighted stages, None otherwise
    drops: list  # drops[j] = primes rescaled at point j (point 0: inputs; then one per poly; last: outputs)
    precision_bits: float  # min over weighted layers of log2(rho * max|W|)
    poly_rho: list = field(default_factory=list)  # per stage: multiplier of a poly's leading coefficient
    mask_bits: float = 0.0
    est_cost: float = 0.0


def poly_points(stages: list[Stage]) -> list[int]:
    return [i for i, st in enumerate(stages) if st.kind == "poly"]


def plan_scales(stages: list[Stage], primes: list[int], level0: int, log_s0: float, n: int,
                mask_bits: float = 0.0, force_drops: list[int] | None = None, cost_pass: bool = True) -> Plan:
    """Solve the MILP of the module docstring; raises ParameterError when no plan exists.

    `force_drops` (one count per rescale point) pins the rescale placement (for experiments and tests);
    `cost_pass=False` stops after the precision pass (screening parameter candidates)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    lq = [math.log2(q) for q in primes[:level0]]
    K = level0 - 1  # droppable primes
    beta = [lq[level0 - 1 - k] for k in range(K)]  # beta[k]: bits of the (k+1)-th prime dropped
    pts = poly_points(stages)
    P = len(pts) + 2  # point 0 = inputs, one per poly, last = outputs
    wst = [i for i, st in enumerate(stages) if st.weighted]
    nx = len(wst)
    # variable vector: [x_0..x_{nx-1}, t, z_{j,k} (j < P, k < K)]
    nv = nx + 1 + P * K
    ix = {i: k for k, i in enumerate(wst)}
    it = nx

    def iz(j, k):
        return nx + 1 + j * K + k

    rows, lo, hi = [], [], []

    def add(coef: dict, lb=-np.inf, ub=np.inf):
        r = np.zeros(nv)
        for k, v in coef.items():
            r[k] += v
        rows.append(r)
        lo.append(lb)
        hi.append(ub)

    # monotone z: z_{j,k} >= z_{j,k+1}; z_{j,k} <= z_{j+1,k}
    for j in range(P):
        for k in range(K - 1):
            add({iz(j, k): 1, iz(j, k + 1): -1}, lb=0)
        if j + 1 < P:
            for k in range(K):
                add({iz(j + 1, k): 1, iz(j, k): -1}, lb=0)

    # affine expression helpers: dict var -> coef, plus constant
    def logq(j):  # log2 Q after point j's drops: sum(lq) - sum_k z_{j,k} beta_k
        return {iz(j, k): -beta[k] for k in range(K)}, sum(lq)

    def le(expr, c, rhs_expr, rhs_c, slack=0.0):  # expr + c <= rhs_expr + rhs_c - slack
        coef = dict(expr)
        for k, v in rhs_expr.items():
            coef[k] = coef.get(k, 0.0) - v
        add(coef, ub=rhs_c - c - slack)

    def drop(expr, c, j):  # subtract the bits dropped between point j-1 and j
        e = dict(expr)
        for k in range(K):
            e[iz(j, k)] = e.get(iz(j, k), 0.0) - beta[k]
            if j > 0:
                e[iz(j - 1, k)] = e.get(iz(j - 1, k), 0.0) + beta[k]
        return e, c

    s_expr, s_c = {}, float(log_s0)
    s_expr, s_c = drop(s_expr, s_c, 0)
    # rescaling the inputs must leave them a usable scale (a no-op constraint when nothing is dropped
    # and the client's scale is already above the floor)
    noise = math.log2(n) + 1.0
    add(dict(s_expr), lb=min(FLOOR_POLY_IN + noise, log_s0) - s_c)
    j = 0
    for i, st in enumerate(stages):
        lb = math.log2(st.bound)
        if st.kind == "poly":
            j += 1
            s_expr, s_c = drop(s_expr, s_c, j)
            add(dict(s_expr), lb=FLOOR_POLY_IN + noise - s_c)  # scale floor at the poly input
            d = st.degree
            lrp = 0.0 if st.coeffs[-1] == 1.0 else POLY_COEF_BITS - math.log2(abs(st.coeffs[-1]))
            s_expr = {k: v * d for k, v in s_expr.items()}
            s_c = s_c * d + lrp
            qe, qc = logq(j)
            le(s_expr, s_c + lb, qe, qc, MARGIN_BITS)
            continue
        if st.weighted:
            s_expr = dict(s_expr)
            s_expr[ix[i]] = s_expr.get(ix[i], 0.0) + 1.0
            add({ix[i]: 1.0, it: -1.0}, lb=-math.log2(st.maxw()))  # t <= x + log2 max|W|
        elif st.kind == "pool":
            s_c += math.log2(st.pool[0] * st.pool[1])
        qe, qc = logq(j)
        le(s_expr, s_c + lb, qe, qc, MARGIN_BITS)
    # outputs: optional mask, then rescale point P-1, then everything fits in q_0
    s_c += mask_bits
    if mask_bits:
        qe, qc = logq(j)
        le(s_expr, s_c + math.log2(stages[-1].bound), qe, qc, MARGIN_BITS)
    s_expr, s_c = drop(s_expr, s_c, P - 1)
    add(dict(s_expr), lb=FLOOR_OUT + noise - s_c)
    le(s_expr, s_c + math.log2(stages[-1].bound), {}, lq[0], MARGIN_BITS)

    if force_drops is not None:
        if len(force_drops) != P or sum(force_drops) > K or min(force_drops) < 0:
            raise ParameterError(f"force_drops needs {P} non-negative counts summing to at most {K}")
        cum = np.cumsum(force_drops)
        for jj in range(P):
            for k in range(K):
                add({iz(jj, k): 1.0}, lb=float(k < cum[jj]), ub=float(k < cum[jj]))
    # variable bounds
    lbv, ubv = np.full(nv, -np.inf), np.full(nv, np.inf)
    for i, k in ix.items():
        st = stages[i]
        lw, l1 = math.log2(st.maxw()), math.log2(max(st.row_l1(), 1e-300))
        lbv[k] = -lw  # at least one integer unit for the largest weight
        ubv[k] = min(PRECISION_CAP - lw, 53 - MIN_LIMB_BITS - l1)
        if ubv[k] < lbv[k]:
            raise ParameterError(f"layer {st.name}: weights too uneven to quantize exactly")
    lbv[it], ubv[it] = -60, PRECISION_CAP
    for jj in range(P):
        for k in range(K):
            lbv[iz(jj, k)], ubv[iz(jj, k)] = 0, 1
    integrality = np.zeros(nv)
    integrality[nx + 1:] = 1
    A = np.array(rows) if rows else np.zeros((0, nv))
    cons = [LinearConstraint(A, np.array(lo), np.array(hi))] if rows else []
    c = np.zeros(nv)
    c[it] = -1.0
    res = milp(c, constraints=cons, integrality=integrality, bounds=Bounds(lbv, ubv), options=_MILP_OPTS)
    if res.status != 0 or res.x is None:
        raise ParameterError("no scale plan fits these CKKS parameters: the network needs a larger "
                             "coefficient modulus (more or bigger primes, or N=16384), a different input "
                             "scale, or a smaller input bound")
    t_best = float(res.x[it])
    if not cost_pass:
        return Plan([None] * len(stages), [], t_best)
    # second pass: the cheapest plan keeping PREC_TARGET bits (or within half a bit of the best, if less),
    # choosing each layer's limb width (fewer limbs = fewer matrix products) jointly with rho and drops
    t_goal = min(t_best - 0.5, PREC_TARGET)
    qbits = [q.bit_length() for q in primes[:level0]]
    cand_b = sorted({b for qb in qbits for T in range(1, 9) for b in [-(-qb // T)]
                     if MIN_LIMB_BITS <= b <= 52} | {MIN_LIMB_BITS})
    base_cost, unit, const = _cost_vector(stages, P, K, nv, iz, n, qbits, level0)
    ny = len(wst) * len(cand_b)
    nv2 = nv + ny
    rows2 = [np.concatenate([r, np.zeros(ny)]) for r in rows]
    lo2, hi2 = list(lo), list(hi)
    cost2 = np.concatenate([base_cost, np.zeros(ny)])
    for a, i in enumerate(wst):
        st = stages[i]
        l1 = math.log2(max(st.row_l1(), 1e-300))
        r_one = np.zeros(nv2)
        r_lim = np.zeros(nv2)
        r_lim[ix[i]] = 1.0
        for cidx, b in enumerate(cand_b):
            v = nv + a * len(cand_b) + cidx
            r_one[v] = 1.0
            r_lim[v] = b
            cost2[v] = unit[i] * sum(-(-qb // b) for qb in qbits)
        rows2 += [r_one, r_lim]
        lo2 += [1.0, -np.inf]
        hi2 += [1.0, 53.0 - l1 - 0.1]
    cost2[it] = -1e-3  # among plans of (nearly) equal cost, the more precise
    r_t = np.zeros(nv2)
    r_t[it] = 1.0
    rows2.append(r_t)
    lo2.append(t_goal)
    hi2.append(np.inf)
    lbv2 = np.concatenate([lbv, np.zeros(ny)])
    ubv2 = np.concatenate([ubv, np.ones(ny)])
    integ2 = np.concatenate([integrality, np.ones(ny)])
    res2 = milp(cost2, constraints=[LinearConstraint(np.array(rows2), np.array(lo2), np.array(hi2))], options=_MILP_OPTS,
                integrality=integ2, bounds=Bounds(lbv2, ubv2))
    x = res2.x[:nv] if (res2.status == 0 and res2.x is not None) else res.x
    est = const + (float(cost2 @ res2.x) if (res2.status == 0 and res2.x is not None) else float("nan"))
    zz = np.round(x[nx + 1:]).astype(int).reshape(P, K)
    cum = zz.sum(axis=1)
    drops = [int(cum[0])] + [int(cum[jj] - cum[jj - 1]) for jj in range(1, P)]
    log_rho = [None] * len(stages)
    for i, k in ix.items():
        # a hair below the LP optimum so that float rounding never crosses a constraint
        log_rho[i] = float(x[k]) - 1e-6
    poly_rho = [None] * len(stages)
    for i, st in enumerate(stages):
        if st.kind == "poly" and st.coeffs[-1] != 1.0:
            poly_rho[i] = 2.0 ** (POLY_COEF_BITS - math.log2(abs(st.coeffs[-1])))
    prec = min((log_rho[i] + math.log2(stages[i].maxw()) for i in wst), default=PRECISION_CAP)
    return Plan(log_rho, drops, prec, poly_rho, mask_bits, est)


# CPU seconds of the building blocks at N = 8192 on the 2-core development machine (scaled by N / 8192):
# one NTT of one prime's polynomial inside a SEAL rescale; a square's products per prime; relinearizing
# a 3-part ciphertext, per prime; loading a seeded input ciphertext, per prime; multiply-accumulates per
# second of the small-row conv blocks and of dense layers; one elementwise numpy pass per element.
_C_NTT, _C_SQUARE, _C_RELIN, _C_LOAD = 1.25e-4, 9e-5, 8e-4, 3.3e-4
_MAC_CONV, _MAC_DENSE, _C_ELEM = 3e9, 1.5e10, 1.5e-9


def _cost_vector(stages, P, K, nv, iz, n, qbits, level0):
    """A rough CPU-seconds model for the second pass. Returns (cost over the z variables, per-stage cost
    of one limb of one prime for linear stages, constant part). Dropping a prime earlier saves the
    per-prime work of every later stage (estimated with ~26-bit limbs) and costs one SEAL rescale per
    unit where it happens (~size * level NTTs)."""
    f = n / 8192
    c = np.zeros(nv)
    unit = {}
    const = stages[0].n_in * level0 * _C_LOAD * f
    j = 0
    size = 2
    drop_bits = [qbits[level0 - 1 - k] for k in range(K)]

    def rescale_cost(jj, units, sz):
        for k in range(K):
            per = units * sz * (level0 - k) * _C_NTT * f  # the k-th drop happens at level level0 - k
            c[iz(jj, k)] += per
            if jj > 0:
                c[iz(jj - 1, k)] -= per

    rescale_cost(0, stages[0].n_in, 2)
    for i, st in enumerate(stages):
        if st.kind == "poly":
            j += 1
            rescale_cost(j, st.n_in, 2)  # size-3 inputs are relinearized first
            per_prime = st.n_in * (_C_SQUARE * max(1, st.degree - 1) + (_C_RELIN if size == 3 else 0.0)) * f
            const += per_prime * level0
            for k in range(K):
                c[iz(j, k)] -= per_prime
            size = 3
            continue
        if st.kind == "conv":
            macs, rate = st.n_out * st.weight[0].size * 1.4, _MAC_CONV
        elif st.kind == "dense":
            macs, rate = st.n_out * st.n_in, _MAC_DENSE
        else:
            macs, rate = 0.0, 1e10
        unit[i] = (macs / rate + (4 * st.n_in + 14 * st.n_out) * _C_ELEM) * size * n
        for k in range(K):
            c[iz(j, k)] -= unit[i] * -(-drop_bits[k] // 26)
    rescale_cost(P - 1, stages[-1].n_out, 2)
    return c, unit, const
