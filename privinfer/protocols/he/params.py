"""Automatic CKKS parameters from the compiled IR, always within the HE standard's 128-bit bounds.

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

`select_params` picks the smallest ring degree N whose bound fits the chain at the largest scale (<= 30
bits, >= `min_scale_bits`) and whose slots hold every vector; then it spends leftover bits on the client's
input scale.

Circuit-private mode (`flood=True`) pays modulus bits for precision, because the evaluation error it must
flood shrinks in proportion to the scale: scales 2^44..2^52 (FLOOD_MIN/MAX_SCALE_BITS), which needs
    * x² rescaled on its own ("sqr": a prime of 2t - t = t bits; else the next prime needs t + w > 60 bits),
    * the result left on two primes (q0, q1) holding output scale + value bits + 2 (a single prime <= 60 bits
      would cap the output scale at 60 - value_bits - 2, i.e. 2^41 with the zoo networks' sound 17-bit bound),
    * a FLOOD_MASK_BITS prime for the output mask (a masked slot keeps 2^-(mask_bits - 8) of its value).
On cryptonets-mnist / tenseal-mnist that is N=16384, scale 2^51, 438/438 bits (8 data primes + special). Batch packing (one image per slot) uses a uniform chain of `depth` equal primes.

The 128-bit bounds (HomomorphicEncryption.org standard, ternary secret; SEAL enforces the same table):
N=4096: 109 bits, 8192: 218, 16384: 438, 32768: 881.
"""
from __future__ import annotations

import importlib
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ...errors import ParameterError, ResourceLimitError
from ...model.ir import Graph
from .program import Activation, Affine, Program, build_program

MAX_BITS_128 = {4096: 109, 8192: 218, 16384: 438, 32768: 881}
RING_DEGREES = (4096, 8192, 16384, 32768)
MAX_PRIME_BITS = 60
SPECIAL_MARGIN_BITS = 10
#: channel-packed plans that rotate the fresh input in fast mode: input scale this far above the chain's scale
INPUT_HEADROOM_BITS = 8
#: with the 10-bit margin (only for plans that rotate the fresh input), data primes stay <= 50 bits
MAX_DATA_PRIME_BITS = MAX_PRIME_BITS - SPECIAL_MARGIN_BITS
DEFAULT_MAX_SCALE_BITS = 30
DEFAULT_MIN_SCALE_BITS = 22
DEFAULT_VALUE_BITS = 10
#: plaintext weights may be encoded coarser than the ciphertext scale (bits then go to the scale); measured on
#: the zoo networks the weights' encoding error matters as much as the rescale noise, so: equal
WEIGHT_BITS_BELOW_SCALE = 0
MIN_WEIGHT_BITS = 20
#: batch packing: a ring whose best chain leaves less weight precision than this is skipped for a larger one
BATCH_MIN_PRECISION_BITS = 12
#: bits of the 0/1 output mask (latency packing): its encoding error, ~2^-(bits - 5) relative, is what is left
#: of a masked slot's value; a logit is multiplied by (1 + that error), a function of the logit only.
#: Circuit-private mode gives the mask a level (a MASK_BITS prime, rescaled away: the output scale stays
#: large); fast mode multiplies at the last level without rescaling, paying FAST_MASK_BITS in q0 only, so
#: the chain keeps its number of primes and the latency its cost
MASK_BITS = 30
FAST_MASK_BITS = 20
#: circuit-private mode: the smallest scale the parameter search accepts (precision is what the flood margin
#: is measured against; N grows to 16384 where the network needs it)
FLOOD_MIN_SCALE_BITS = 44
FLOOD_MAX_SCALE_BITS = 52
FLOOD_MASK_BITS = 56


def _min_prime_bits(N: int) -> int:
    # primes must be 1 mod 2N; leave room for several of them below 2^bits
    return int(math.log2(2 * N)) + 6


@dataclass(frozen=True)
class HEParams:
    """A CKKS parameter set; JSON round-trips through `to_json`/`from_json` (sent in WELCOME)."""
    N: int
    coeff_mod_bit_sizes: tuple
    scale_bits: int
    depth: int
    slots: int
    security_bits: int = 128
    packing: str = "latency"
    input_scale_bits: int = 0
    weight_bits: int = 0
    output_scale_bits: int = 0
    value_bits: int = DEFAULT_VALUE_BITS
    batch: int = 1
    notes: dict = field(default_factory=dict, compare=False)

    @property
    def total_bits(self) -> int:
        return int(sum(self.coeff_mod_bit_sizes))

    @property
    def max_bits(self) -> int:
        return MAX_BITS_128[self.N]

    @property
    def scale(self) -> float:
        return 2.0 ** self.scale_bits

    def to_json(self) -> dict:
        d = asdict(self)
        d["coeff_mod_bit_sizes"] = list(self.coeff_mod_bit_sizes)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "HEParams":
        from ...errors import ProtocolError
        try:
            d = dict(d)
            d["coeff_mod_bit_sizes"] = tuple(int(v) for v in d["coeff_mod_bit_sizes"])
            p = cls(**d)
        except (TypeError, KeyError, ValueError) as e:
            raise ProtocolError(f"malformed CKKS parameters: {e}") from None
        p.validate()
        return p

    def validate(self) -> None:
        if self.N not in MAX_BITS_128:
            raise ParameterError(f"N={self.N} is not one of {sorted(MAX_BITS_128)}")
        if self.total_bits > MAX_BITS_128[self.N]:
            raise ParameterError(f"coeff modulus of {self.total_bits} bits exceeds the 128-bit bound "
                                 f"{MAX_BITS_128[self.N]} for N={self.N}")
        if self.slots != self.N // 2 or self.security_bits != 128:
            raise ParameterError("inconsistent parameters (slots must be N/2, security 128 bits)")
        if any(not 17 <= b <= MAX_PRIME_BITS for b in self.coeff_mod_bit_sizes) or len(self.coeff_mod_bit_sizes) < 2:
            raise ParameterError(f"prime sizes {self.coeff_mod_bit_sizes} outside 17..60 bits")

    def describe(self) -> str:
        return (f"CKKS N={self.N} ({self.slots} slots), primes {list(self.coeff_mod_bit_sizes)} = {self.total_bits}"
                f"/{self.max_bits} bits, scale 2^{self.scale_bits}, depth {self.depth}, {self.security_bits}-bit security")


# --- latency chain --------------------------------------------------------------------------------
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


def _with_special(data: list[int], margin: int = SPECIAL_MARGIN_BITS) -> list[int]:
    return data + [min(MAX_PRIME_BITS, max(data) + margin)]


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


def program_of(graph_or_program) -> Program:
    return graph_or_program if isinstance(graph_or_program, Program) else build_program(graph_or_program)


def value_bits_from_data(graph_or_program, X, margin_bits: int = 2) -> int:
    """Integer bits of the largest magnitude any intermediate takes on `X` (calibration), plus a margin."""
    prog = program_of(graph_or_program)
    X = np.asarray(X, dtype=np.float64).reshape(len(X), -1)
    peak = float(np.abs(X).max()) if X.size else 1.0
    for x in X[: min(len(X), 256)]:
        v = x
        for op in prog.ops:
            if isinstance(op, Affine):
                v = op.A @ v + op.b  # partial sums of the diagonal method stay within the margin bits
            elif op.kind == "square":
                v = v * v
            else:
                u2 = v * v + op.const
                peak = max(peak, float(np.abs(u2).max()))
                v = v * u2
            peak = max(peak, float(np.abs(v).max()))
    return max(4, int(math.ceil(math.log2(max(peak, 1.0)))) + margin_bits)


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


def select_params(graph, packing: str = "latency", value_bits: int | None = None, batch: int = 1, *,
                  calibration=None, max_scale_bits: int = DEFAULT_MAX_SCALE_BITS,
                  min_scale_bits: int = DEFAULT_MIN_SCALE_BITS, min_N: int = 4096, mask: bool = False,
                  flood: bool = False, _flood_retry: bool = False) -> HEParams:
    """Choose CKKS parameters for `graph` (an IR Graph or an HE Program) under `packing`.

    `value_bits`: integer bits of the largest intermediate value (else from `calibration` data, else 10).
    `mask` (latency): budget the 0/1 mask that zeroes every slot but the logits (its own level with `flood`,
    else FAST_MASK_BITS more in q0).
    `flood` (latency): circuit-private mode; insist on scales >= FLOOD_MIN_SCALE_BITS (a larger ring where
    needed), falling back to the usual range when even N=32768 cannot hold them.
    Raises ParameterError when the network is too deep for the largest 128-bit parameters.
    """
    if flood and packing == "latency" and min_scale_bits < FLOOD_MIN_SCALE_BITS and not _flood_retry:
        try:
            return select_params(graph, packing, value_bits, batch, calibration=calibration,
                                 max_scale_bits=max(max_scale_bits, FLOOD_MAX_SCALE_BITS),
                                 min_scale_bits=FLOOD_MIN_SCALE_BITS, min_N=min_N, mask=mask, flood=True, _flood_retry=True)
        except ParameterError:
            pass
    if packing not in ("latency", "batch"):
        raise ParameterError(f"packing must be 'latency' or 'batch', got {packing!r}")
    if value_bits is None:
        value_bits = value_bits_from_data(graph, calibration) if calibration is not None else DEFAULT_VALUE_BITS
    vb = int(value_bits)
    if packing == "batch":
        return _select_batch(graph, batch, vb, max_scale_bits, min_scale_bits, min_N)
    prog = program_of(graph)
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


# --- batch packing ---------------------------------------------------------------------------------
def batch_depth(graph: Graph) -> int:
    """Levels of the batch engine: its own `depth(graph)` when present, else one per weighted/poly layer."""
    try:
        mod = importlib.import_module("privinfer.protocols.he.batch")
        if hasattr(mod, "depth"):
            return int(mod.depth(graph))
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("privinfer"):
            raise
    d = 0
    for layer in graph.layers:
        if layer.kind in ("conv2d", "linear"):
            d += 1
        elif layer.kind == "avgpool2d":
            d += 1
        elif layer.kind == "poly" and layer.degree >= 2:
            d += int(math.ceil(math.log2(layer.degree))) + (0 if layer.coeffs in ((0.0, 0.0, 1.0),) else 1)
    return max(d, 1)


def _select_batch(graph, batch: int, vb: int, max_t: int, min_t: int, min_N: int) -> HEParams:
    if not isinstance(graph, Graph):
        raise ParameterError("batch packing parameters need the IR graph")
    batch = int(batch)
    if batch < 1:
        raise ParameterError(f"batch must be >= 1, got {batch}")
    if batch > RING_DEGREES[-1] // 2:
        raise ResourceLimitError(f"batch {batch} exceeds the {RING_DEGREES[-1] // 2} slots of the largest ring")
    d = batch_depth(graph)
    suggest = None
    try:  # the batch engine knows best which chain its planner can use: ask it when it offers
        suggest = getattr(importlib.import_module("privinfer.protocols.he.batch"), "suggest_params", None)
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("privinfer"):
            raise
    if suggest is not None:
        for N in RING_DEGREES:
            if N < min_N or N // 2 < batch:
                continue
            try:
                # NB: the chain is chosen for these weights' bounds and published in WELCOME (a few bits about
                # their magnitudes); a weight-free search left too little precision (see notes/he-privacy.md)
                # a batch filling whole slot groups needs no output mask (batch_params.py)
                got = suggest(graph, N, full_groups=batch % (N // 2) == 0)
            except ParameterError:
                continue
            bits = tuple(int(b) for b in got["coeff_bits"])
            if sum(bits) > MAX_BITS_128[N] or float(got.get("precision_bits", 0.0)) < BATCH_MIN_PRECISION_BITS:
                continue  # (the output mask costs 24 bits: a small ring may be left with too little precision)
            p = HEParams(N=N, coeff_mod_bit_sizes=bits, scale_bits=int(got["scale_bits"]), depth=d,
                         slots=N // 2, packing="batch", input_scale_bits=int(got["scale_bits"]),
                         weight_bits=0, output_scale_bits=0, value_bits=vb, batch=batch,
                         notes={})
            p.validate()
            return p
    for N in RING_DEGREES:
        if N < min_N or N // 2 < batch:
            continue
        for t in range(max(max_t, 40), min_t - 1, -1):
            q0 = min(MAX_DATA_PRIME_BITS, t + vb + 2)
            if q0 < t + 4 or t < _min_prime_bits(N):
                continue
            bits = _with_special([q0] + [t] * d)
            if sum(bits) <= MAX_BITS_128[N]:
                p = HEParams(N=N, coeff_mod_bit_sizes=tuple(bits), scale_bits=t, depth=d, slots=N // 2,
                             packing="batch", input_scale_bits=t, weight_bits=t, output_scale_bits=t,
                             value_bits=vb, batch=batch)
                p.validate()
                return p
    maxd = (MAX_BITS_128[RING_DEGREES[-1]] - 2 * (min_t + vb + 1)) // min_t
    raise ParameterError(f"network too deep for batch-packed HE at 128-bit security: it needs depth {d} but the "
                         f"largest parameters (N={RING_DEGREES[-1]}, {MAX_BITS_128[RING_DEGREES[-1]]} bits, scale "
                         f"2^{min_t}) allow at most depth {maxd}")


def params_digest(p: HEParams) -> str:
    return json.dumps(p.to_json(), sort_keys=True)
