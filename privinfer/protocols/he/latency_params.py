"""The latency packing's CKKS parameter search: a bit budget per rescale, then the smallest ring that holds it.

Why apart from `params.py`: the latency chain is its own model of levels and scales (the one `latency_eval.py`
evaluates), with its own precision and circuit-privacy trade-offs; `params.select_params` is the front door
for both packings and hands latency programs to `select_latency` here.

Latency packing (`latency.py`) uses a *bit-budget* evaluation: a ciphertext enters every segment at a known
scale; the segment multiplies by plaintexts encoded at a chosen scale and rescales **once**; a square doubles
the scale and is *not* rescaled on its own (the next segment's single rescale absorbs it); a cube rescales
once. So the multiplicative depth is `#segments + #cubes`, and each rescale drops one prime sized to exactly
what that step adds:

    first segment      prime = input_bits + weight_bits - scale_bits
    segment after x²   prime = 2 scale_bits + weight_bits - scale_bits
    cube               prime = 2 scale_bits - scale_bits
    last segment       prime = in_bits + weight_bits - output_bits
    q0                 = output_bits + value_bits + 2      (holds the logits; no larger than the other primes)
    special prime      = the largest data prime. SEAL's key-switching noise (~2^19 * q_max / special) is
                         harmless because every rotation and relinearization of the latency evaluator runs at
                         scale >= 2^(2 scale_bits); when the plan rotates the fresh input (dense first layer)
                         the special prime is kept 10 bits above the data primes instead.
    precision          measured on the zoo networks, CKKS rescale rounding (~2^13 absolute) and the weights'
                         encoding at 2^weight_bits dominate: both ~2^-(scale_bits - 13) in value units

Channel-packed plans (`convpack.py`) rotate the fresh input (kernel offsets as baby steps): in fast mode they
get no special-prime margin but an input scale INPUT_HEADROOM_BITS above the chain's scale instead, so the
key-switching noise (~2^19) stays ~2^-(t_in - 19) of a pixel, no more than one rescale's rounding. When such
a plan's last segment writes each logit exactly once and multiplies every other slot by encoded zeros
(`convpack_plan.clean_output`), the output mask is already in its plaintexts: fast mode then spends nothing on a
mask ("folded": one prime fewer where the mask would need a level, e.g. minionn-mnist-he, whose sound 31-bit
value bound leaves q0 no room for FAST_MASK_BITS); circuit-private mode keeps its MASK_BITS level.

`select_latency` picks the smallest ring degree N whose bound fits the chain at the largest scale (<= 30
bits, >= `min_scale_bits`) and whose slots hold every vector; then it spends leftover bits on the client's
input scale.

Circuit-private mode (`flood=True`) pays modulus bits for precision, because the evaluation error it must
flood shrinks in proportion to the scale: scales 2^44..2^52 (FLOOD_MIN/MAX_SCALE_BITS), which needs
    * x² rescaled on its own ("sqr": a prime of 2t - t = t bits; else the next prime needs t + w > 60 bits),
    * the result left on two primes (q0, q1) holding output scale + value bits + 2 (a single prime <= 60 bits
      would cap the output scale at 60 - value_bits - 2, i.e. 2^41 with the zoo networks' sound 17-bit bound),
    * a FLOOD_MASK_BITS prime for the output mask (a masked slot keeps 2^-(mask_bits - 8) of its value).
On cryptonets-mnist / tenseal-mnist that is N=16384, scale 2^51, 438/438 bits (8 data primes + special).
"""
from __future__ import annotations

from ...errors import ParameterError
from .ckks_params import (DEFAULT_MAX_SCALE_BITS, FAST_MASK_BITS, FLOOD_MASK_BITS, FLOOD_MAX_SCALE_BITS,
                          FLOOD_MIN_SCALE_BITS, INPUT_HEADROOM_BITS, MASK_BITS, MAX_BITS_128, MAX_DATA_PRIME_BITS,
                          MAX_PRIME_BITS, MIN_WEIGHT_BITS, RING_DEGREES, SPECIAL_MARGIN_BITS, WEIGHT_BITS_BELOW_SCALE,
                          HEParams, _min_prime_bits, _next_pow2, _with_special)
from .program import Program


def _latency_chain(structure: list[str], N: int, t: int, w: int, t_in: int, vb: int, hi: int | None = None,
                   mask_bits: int = 0, split_q0: bool = False):
    """(data primes in coeff-modulus order [q0, ..., first dropped], output bits) or None if infeasible.

    `split_q0`: the result is left at the level of *two* primes (q0, q1) that together hold output scale + value
    bits; the output scale is then the chain's scale t instead of being squeezed below 60 - value bits (high-
    precision chains; the reply is one prime larger)."""
    lo, hi = _min_prime_bits(N), (hi or MAX_DATA_PRIME_BITS)
    mask = bool(structure) and structure[-1] == "mask"      # 0/1 mask with its own level (a prime of mb bits)
    extra = 0
    if bool(structure) and structure[-1] == "mask0":        # 0/1 mask in q0: mb more bits there, no level
        structure, extra = structure[:-1], int(mask_bits)
    if mask:
        structure = structure[:-1]
        mb = min(hi, max(lo, mask_bits))
    last = max(i for i, op in enumerate(structure) if op == "lin")
    s = t_in
    drops: list[int] = []
    t_out = None
    # q0 and the last prime share (s_last + w + vb + 2) bits; keep q0 no larger than the other primes so that
    # it does not force a larger special prime (the special prime must be >= every data prime)
    cap = max([t_in + w - t] + ([t + w] if structure.count("lin") > 2 or "cube" in structure else [])
              + ([2 * t + w - t] if "sq" in structure else []) + ([t, w] if "sqr" in structure else []))
    cap = max(min(hi, cap), t + vb + 2 + extra)
    for i, op in enumerate(structure):
        if op == "lin":
            if i == last and split_q0:
                t_out = t
                drops.append(s + w - t_out)
                s = t_out
            elif i == last:
                t_out = min(cap - 2 - vb - extra, hi - 2 - vb - extra, s + w - lo)
                if t_out < max(t, s + w - hi):
                    return None
                drops.append(s + w - t_out)
                s = t_out
            else:
                drops.append(s + w - t)
                s = t
        elif op == "sq":
            s = 2 * s
        elif op == "sqr":  # x² rescaled on its own (high-precision chains): one prime of 2s - t bits
            drops.append(2 * s - t)
            s = t
        else:  # cube: rescale u² back to t, then multiply by u
            drops.append(2 * s - t)
            s = s + t
    if last != len(structure) - 1:  # pragma: no cover - programs always end with a segment
        return None
    if mask:
        drops.append(mb)
    q0 = t_out + vb + 2 + extra
    data = ([q0 - q0 // 2, q0 // 2] if split_q0 else [q0]) + drops[::-1]
    if any(not lo <= b <= hi for b in data):
        return None
    # every intermediate must fit below the remaining modulus: scale + value bits < remaining bits
    remaining = sum(data)
    s = t_in
    idx = 0
    for i, op in enumerate(structure):
        if op == "lin":
            if s + w + vb + 1 > remaining:
                return None
            remaining -= drops[idx]
            idx += 1
            s = t_out if i == last else t
        elif op == "sq":
            s = 2 * s
            if s + vb + 1 > remaining:
                return None
        elif op == "sqr":
            if 2 * s + vb + 1 > remaining:
                return None
            remaining -= drops[idx]
            idx += 1
            s = t
        else:
            if 2 * s + vb + 1 > remaining:
                return None
            remaining -= drops[idx]
            idx += 1
            s = s + t
    if mask and s + mb + vb + 1 > remaining:
        return None
    return data, t_out


def _fits(structure: list[str], N: int, t: int, vb: int) -> bool:
    got = _latency_chain(structure, N, t, t, t, vb)
    return got is not None and sum(_with_special(got[0])) <= MAX_BITS_128[N]


def _max_depth(N: int, t: int, vb: int) -> int:
    """Largest depth (segments of a lin, x², lin, ... chain) that fits N at scale 2^t."""
    k = 0
    while k < 64 and _fits(["lin", "sq"] * k + ["lin"], N, t, vb):
        k += 1
    return k  # k segments fitted (k-1 squares + 1), i.e. depth k


def _rotates_at_low_scale(prog: Program, slots: int) -> bool:
    """True when the plan rotates a fresh input ciphertext (diagonal-method first segment): key-switching
    noise then meets the input scale, and the special prime must stay 10 bits above the data primes.
    Every other rotation / relinearization of the latency evaluator happens at scale >= 2^(2*scale_bits)."""
    from .latency import plan_latency
    try:
        plan = plan_latency(prog, slots)
    except ParameterError:
        return True
    first = plan.steps[0]
    if first.kind == "rot":  # channel packing: babies rotate the fresh input (see convpack)
        return "input" if any(first.babies(c) for c in range(first.n_in)) else False
    return first.kind == "diag" and bool(first.babies() and max(first.babies()) > 0)


def _clean_output(prog: Program, slots: int) -> bool:
    """Whether the latency plan at `slots` ends on a clean one-copy result (`convpack_plan.clean_output`)."""
    from .convpack_plan import clean_output
    from .latency import plan_latency
    try:
        return clean_output(plan_latency(prog, slots))
    except ParameterError:
        return False


def _folded(p: HEParams) -> HEParams:
    """Fast-mode parameters whose output mask is folded into the last segment's plaintexts: every non-logit
    slot then keeps the weights' encoding error (scale 2^weight_bits) times the values there, which is what
    `privacy.evaluation_noise_terms` reads from `mask_bits`."""
    p.notes.update(mask="folded", mask_bits=int(p.weight_bits))
    return p


def mask_options(params: HEParams) -> dict:
    """`CompiledPlan`'s output-mask and square options for parameters chosen with `select_params(mask=True)`:
    a mask level ("mask"), 20 bits of q0 ("mask0"), or none left to apply ("folded" into the last segment)."""
    notes = params.notes if isinstance(params.notes, dict) else {}
    structure = notes.get("structure", [""])
    return {"mask": notes.get("mask") != "folded",
            "mask_bits": notes.get("mask_bits") if structure[-1] == "mask0" else None,
            "rescale_squares": "sqr" in structure}


def _plannable(prog: Program, slots: int) -> bool:
    """Whether some latency plan fits `slots`: one ciphertext per vector, or the channel packing."""
    if _next_pow2(prog.max_dim()) <= slots:
        return True
    from .convpack_plan import plan_multi
    if getattr(prog, "conv_packing", "auto") == "off":
        return False
    try:
        return plan_multi(prog, slots) is not None
    except ParameterError:
        return False


def _latency_candidates(structure, N, vb, margin, t, depth, w_below, mask_bits, split, hi):
    """Every parameter set at scale 2^t that fits N: each input scale from t to t + 8 bits."""
    w = max(MIN_WEIGHT_BITS, t - w_below)
    for t_in in range(t, t + 9):
        got = _latency_chain(structure, N, t, w, t_in, vb, hi, mask_bits, split)
        if got is None or sum(_with_special(got[0], margin)) > MAX_BITS_128[N]:
            continue
        yield _make_latency(structure, N, vb, margin, t, depth, mask_bits, split, hi, w, t_in, got)


def _make_latency(structure, N, vb, margin, t, depth, mask_bits, split, hi, w, t_in, got):
    data, t_out = got
    p = HEParams(N=N, coeff_mod_bit_sizes=tuple(_with_special(data, margin)), scale_bits=t, depth=depth,
                 slots=N // 2, packing="latency", input_scale_bits=t_in, weight_bits=w,
                 output_scale_bits=t_out, value_bits=vb, batch=1,
                 notes={"structure": structure, "special_margin_bits": margin,
                        **({"result_primes": 2} if split else {}),
                        **({"mask_bits": int(mask_bits if structure[-1] == "mask0" else
                                             min(hi, max(_min_prime_bits(N), mask_bits)))} if mask_bits else {})})
    p.validate()
    return p


def _latency_at(structure, N, vb, margin, max_t, min_t, depth, w_below=None, mask_bits=0, split=False):
    w_below = WEIGHT_BITS_BELOW_SCALE if w_below is None else w_below
    hi = MAX_PRIME_BITS - margin
    if split:  # circuit-private: of every chain that fits, the one with the smallest estimated error
        from .privacy import FloodPolicy
        best = None
        for t in range(max_t, min_t - 1, -1):
            for p in _latency_candidates(structure, N, vb, margin, t, depth, w_below, mask_bits, split, hi):
                if best is None or FloodPolicy.evaluation_noise(p) < FloodPolicy.evaluation_noise(best):
                    best = p
        return best
    for t in range(max_t, min_t - 1, -1):
        w = max(MIN_WEIGHT_BITS, t - w_below)
        got = _latency_chain(structure, N, t, w, t, vb, hi, mask_bits, split)
        if got is None or sum(_with_special(got[0], margin)) > MAX_BITS_128[N]:
            continue
        t_in = t
        for extra in range(1, 9):  # leftover bits: a finer client input scale
            g2 = _latency_chain(structure, N, t, w, t + extra, vb, hi, mask_bits, split)
            if g2 is None or sum(_with_special(g2[0], margin)) > MAX_BITS_128[N]:
                break
            got, t_in = g2, t + extra
        return _make_latency(structure, N, vb, margin, t, depth, mask_bits, split, hi, w, t_in, got)
    return None


def select_latency(prog: Program, vb: int, *, max_scale_bits: int, min_scale_bits: int, min_N: int, mask: bool,
                   flood: bool, _flood_retry: bool = False) -> HEParams:
    """The latency packing's parameters for `prog` (`params.select_params` documents the options).

    Raises ParameterError when the network is too deep for the largest 128-bit parameters."""
    if flood and min_scale_bits < FLOOD_MIN_SCALE_BITS and not _flood_retry:
        try:
            return select_latency(prog, vb, max_scale_bits=max(max_scale_bits, FLOOD_MAX_SCALE_BITS),
                                  min_scale_bits=FLOOD_MIN_SCALE_BITS, min_N=min_N, mask=mask, flood=True,
                                  _flood_retry=True)
        except ParameterError:
            pass
    need_slots = _next_pow2(prog.max_dim())
    # fast mode puts the mask in q0 (no level); when q0 cannot also hold the values (large sound value
    # bounds), the mask takes a level of its own, as in circuit-private mode, rather than failing
    # a channel-packed plan whose last segment writes each logit once and 0 elsewhere (`convpack_plan.clean_output`)
    # carries the mask in that segment's plaintexts: fast mode then gives it no bits at all ("folded")
    masks = [("mask", MASK_BITS)] if flood else [("folded", 0), ("mask0", FAST_MASK_BITS), ("mask", MASK_BITS)]
    base = prog.structure()
    split = flood and min_scale_bits > DEFAULT_MAX_SCALE_BITS
    if split:
        # high-precision chain: x² rescaled on its own (else the next prime needs 2t + w - t > 60 bits), and a
        # mask prime wide enough that its encoding error stays far below the evaluation error
        base = ["sqr" if op == "sq" else op for op in base]
        masks = [("mask", FLOOD_MASK_BITS)]
    for mask_op, mb in (masks if mask else [(None, 0)]):
        structure = base + ([mask_op] if mask_op and mask_op != "folded" else [])
        depth = sum(1 for op in structure if op != "sq")
        for N in RING_DEGREES:
            if N < min_N:
                continue
            if _latency_at(structure, N, vb, SPECIAL_MARGIN_BITS, max_scale_bits, min_scale_bits, depth, None, mb,
                           split) is None \
                    and _latency_at(structure, N, vb, 0, max_scale_bits, min_scale_bits, depth, None, mb, split) is None:
                continue  # too deep for this ring whatever the plan: no need to plan
            if not _plannable(prog, N // 2) or (mask_op == "folded" and not _clean_output(prog, N // 2)):
                continue
            low = _rotates_at_low_scale(prog, N // 2)
            margin = SPECIAL_MARGIN_BITS if low else 0
            if low == "input" and not flood:
                # channel packing: its babies rotate the fresh input. Instead of 10 bits of special prime on every
                # key, give the input INPUT_HEADROOM_BITS above the scale: the key-switching noise (~2^19 with a
                # special prime >= every data prime) is then ~2^-(t_in - 19) of a pixel, no more than a rescale's
                p = _latency_at(structure, N, vb, 0, max_scale_bits, min_scale_bits, depth, None, mb, split)
                if p is not None and p.input_scale_bits >= p.scale_bits + INPUT_HEADROOM_BITS:
                    return _folded(p) if mask_op == "folded" else p
            p = _latency_at(structure, N, vb, margin, max_scale_bits, min_scale_bits, depth, None, mb, split)
            if p is not None:
                return _folded(p) if mask_op == "folded" else p
    if need_slots > RING_DEGREES[-1] // 2:
        raise ParameterError(f"a vector of {prog.max_dim()} values does not fit the {RING_DEGREES[-1] // 2} slots of "
                             f"the largest ring (N={RING_DEGREES[-1]}); the latency packing needs one ciphertext per vector")
    maxd = _max_depth(RING_DEGREES[-1], min_scale_bits, vb)
    raise ParameterError(f"network too deep for HE at 128-bit security: it needs multiplicative depth {depth} "
                         f"({structure.count('lin')} linear segments, {structure.count('cube')} cubes) but the largest "
                         f"parameters (N={RING_DEGREES[-1]}, {MAX_BITS_128[RING_DEGREES[-1]]} bits, scale "
                         f"2^{min_scale_bits}) allow at most depth {maxd}")

