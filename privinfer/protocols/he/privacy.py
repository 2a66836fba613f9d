"""How much the `he` reply hides about the server's weights: the two circuit-privacy modes and their report.

Why a module of its own: the flood's size, the query cap it is sized for and the statistical margin it buys are
one policy, chosen by the server operator, sent to the client in WELCOME (they are public: configuration, never
derived from the weights) and reported in `stats.privacy`. Both packings use it.

What a reply is made of. The client decrypts, per logit slot, `f(x) + d(x, W) + e + g`: the network's output,
a deterministic CKKS approximation error (plaintext encoding of the weights, rescale rounding), a random error
(the client's encryption noise and rescale roundings, propagated through the weights) and the server's flood
g ~ N(0, flood_std^2). Every non-logit slot is masked (multiplied by a 0/1 plaintext) before that, so it holds
only the mask's own encoding error times the value that was there (2^-48 of it in circuit-private mode, where
the mask has a 56-bit level; 2^-15 in fast mode, where it costs 20 bits of q0 and no level; in fast mode a
channel-packed plan whose last segment writes each logit once folds the mask into that segment's plaintexts,
which encode 0 on every other slot: those keep the zeros' encoding error at 2^weight_bits times the values
read there, `mask_bits` = weight_bits below) plus g. `d + e` depends on the
weights; it is the "evaluation error" the flood must hide. A client that asks the same question k times and
averages divides g by sqrt(k) but not d (issue 9: the attack).

Modes (server option `circuit_privacy`):
  * "flood" (default): g of `flood_std` (default 2^-5 logit units, below the top-2 gaps of the zoo networks on
    the digits split) on parameters chosen for precision (scales 2^44..2^52, N=16384 where needed: params.py),
    and a cap of `max_queries` replies per session (= per client key), refused with QueryLimitError beyond it.
  * "fast": g of 2^-11 on the smallest parameters; no cap. The input is protected, the weights only as far as
    the logits' noise goes.

The margin. `evaluation_noise_estimate` bounds max|d + e| over every decrypted slot from the public
parameters only (`evaluation_noise_terms`: 8-sigma bounds of one rescale's rounding, of the client's fresh
encryption noise at the input scale and of the mask's encoding error times the published value bound, with a
2^GAIN_BITS allowance for the network's gain). It is an estimate, calibrated and checked, not a proof: the
gain depends on the weights. Checked on cryptonets-mnist and tenseal-mnist over the 450 digits test images at
the circuit-private parameters (scale 2^50, input 2^56, N=16384; estimate 2^-27.8 at GAIN_BITS 7, now 2^-26.8): the largest error in any
logit slot was 2^-30.8 / 2^-31.1, in any masked slot 2^-35.0 / 2^-35.2 (notes/flood30.md has the figures). Against it we report
  * `flood_margin_bits` = log2(flood_std / estimate): per reply;
  * `statistical_security_bits` = 2 * flood_margin_bits - log2(64 q): the Renyi-divergence bound of Li,
    Micciancio, Schultz and Sorrell (CRYPTO 2022; flooding of E * 2^(s/2) * sqrt(64 q) keeps s bits over q
    decryptions), the form OpenFHE's NOISE_FLOODING_DECRYPT sizes its flood by (statistical security and
    number of adversarial queries as parameters).
The guarantee word is "cryptographic" only when that figure reaches `statistical_security` (default 30).
Default cap: 128 replies per key. With the 2^-5 flood (the largest that keeps the argmax: top-2 gaps >= 0.128
on the digits split) and E ~ 2^-26.8 at the chosen parameters, 128 gives 30.5 bits; 256 would give 29.5.
A client pays one key upload (~100 MB at these parameters) per 128 replies: ~0.8 MB a reply on top of ~3.4 MB.
Where the parameters cannot reach the target (e.g. secureml-mnist: its dense first layer rotates the fresh
input, which caps data primes at 50 bits and leaves the masked slots' estimate at 2^-21), the report says
"cryptographic-input-only" with the achieved figure.
The cap is per key: nothing stops a client from opening new sessions (fresh keys) and averaging across them;
only a per-client rate limit at the deployment can bound that.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ...errors import ParameterError, ProtocolError

CIRCUIT_PRIVACY_MODES = ("flood", "fast")
FAST_FLOOD_STD = 2.0 ** -11
CIRCUIT_FLOOD_STD = 2.0 ** -5
DEFAULT_MAX_QUERIES = 128
#: tail factor of the error bounds: each rounding error is a sum of N independent terms (CLT), bounded at 8 sigma
#: (two-sided tail 1.2e-15 per slot: over 8192 slots x 2^10 replies, < 1e-8)
TAIL_SIGMAS = 8.0
#: allowance (bits) for the network's gain on the rescale errors of the last layers and the sum of the several
#: error terms; measured on cryptonets-mnist / tenseal-mnist at their circuit-private parameters: 3.9 / 3.7 bits
#: (the largest logit error over the 450 digits test images), so the estimate sits >= 4.0 bits above it there;
#: on the small test network of tests/protocols/he/test_privacy.py one run left only 1.9 bits at 7, hence 8
GAIN_BITS = 8.0
#: std of SEAL's error distribution (clipped Gaussian)
FRESH_SIGMA = 3.2
#: the batch engine's output mask (batch.MASK_BITS)
BATCH_MASK_BITS = 24


@dataclass(frozen=True)
class FloodPolicy:
    mode: str
    flood_std: float
    max_queries: int | None
    statistical_security: int

    @classmethod
    def make(cls, mode, flood_std=None, max_queries=None, statistical_security=30) -> "FloodPolicy":
        if mode not in CIRCUIT_PRIVACY_MODES:
            raise ParameterError(f"he: circuit_privacy must be one of {CIRCUIT_PRIVACY_MODES}, got {mode!r}")
        if flood_std is None:
            flood_std = CIRCUIT_FLOOD_STD if mode == "flood" else FAST_FLOOD_STD
        try:
            flood_std = float(flood_std)
        except (TypeError, ValueError):
            raise ParameterError(f"he: flood_std must be a number, got {flood_std!r}") from None
        if not (math.isfinite(flood_std) and flood_std >= 0):
            raise ParameterError(f"he: flood_std must be >= 0, got {flood_std}")
        if mode == "flood" and flood_std <= 0:
            raise ParameterError("he: circuit_privacy='flood' needs flood_std > 0")
        if max_queries is None and mode == "flood":
            max_queries = DEFAULT_MAX_QUERIES
        if max_queries is not None and (isinstance(max_queries, bool) or not isinstance(max_queries, int)
                                        or max_queries < 1):
            raise ParameterError(f"he: max_queries must be a positive integer, got {max_queries!r}")
        if isinstance(statistical_security, bool) or not isinstance(statistical_security, int) \
                or not 1 <= statistical_security <= 128:
            raise ParameterError(f"he: statistical_security must be an integer in 1..128, got {statistical_security!r}")
        return cls(mode, flood_std, max_queries, statistical_security)

    def to_json(self) -> dict:
        return {"mode": self.mode, "flood_std": self.flood_std, "max_queries": self.max_queries,
                "statistical_security": self.statistical_security}

    @classmethod
    def from_json(cls, d) -> "FloodPolicy":
        if not isinstance(d, dict):
            raise ProtocolError("malformed HE WELCOME: circuit_privacy must be an object")
        try:
            return cls.make(d["mode"], d["flood_std"], d["max_queries"], d["statistical_security"])
        except (KeyError, ParameterError) as e:
            raise ProtocolError(f"malformed HE WELCOME circuit_privacy: {e}") from None

    @staticmethod
    def evaluation_noise(params) -> float:
        """Estimated max |evaluation error| of any decrypted slot, in logit units, from the parameters only
        (they are public: WELCOME carries them). See the module docstring for the derivation."""
        return max(evaluation_noise_terms(params).values())

    def cap(self, params) -> int | None:
        """The replies per key this session enforces: the cap is what makes a "cryptographic" report true, so it
        holds exactly when the report says so (batch packing and fast mode claim less and are not capped)."""
        return self.max_queries if self.report(params)["guarantee"] == "cryptographic" else None

    def report(self, params) -> dict:
        """The `stats.privacy` entries about the weights, for these parameters."""
        noise = self.evaluation_noise(params)
        out = {"circuit_privacy": self.mode, "flood_std": self.flood_std, "max_queries_per_key": self.max_queries,
               "statistical_security_target_bits": self.statistical_security,
               "evaluation_noise_estimate": noise}
        achieved = None
        if self.flood_std > 0:
            margin = math.log2(self.flood_std / noise)
            out["flood_margin_bits"] = round(margin, 1)
            if self.max_queries is not None:
                achieved = statistical_bits(margin, self.max_queries)
                out["statistical_security_bits"] = round(achieved, 1)
        met = self.mode == "flood" and achieved is not None and achieved >= self.statistical_security
        out["guarantee"] = "cryptographic" if met else "cryptographic-input-only"
        out["model_private"] = met
        out["not_protected"] = ["architecture (layer kinds, shapes, activation coefficients)",
                                "CKKS approximation error in the logits",
                                "what the logits themselves reveal (model extraction over many queries)"]
        if not met:
            out["not_protected"].insert(2, f"the weights' evaluation error is hidden only by a flood margin of "
                                           f"{out.get('flood_margin_bits', 0)} bits per reply, below the "
                                           f"{self.statistical_security}-bit target: averaging many replies to "
                                           f"one input removes the flood")
        out["query_cap_enforced"] = met  # the claim rests on the cap only when it is made
        if met:
            out["not_protected"].append("averaging across sessions: the query cap is per key")
        return out

    def shortfall(self, params) -> str | None:
        """What the server operator is told when "flood" was asked for and these parameters cannot reach its
        target (None otherwise). Why: the mode's parameters cost ~10x (minionn-mnist-he: N=32768, ~380 MiB of
        keys, ~8 s per image against ~0.9 s in fast mode), and where they fall short nothing is claimed about the
        weights and no cap is enforced; the operator should know before choosing it for such a network."""
        if self.mode != "flood":
            return None
        rep = self.report(params)
        if rep["guarantee"] == "cryptographic":
            return None
        margin = rep.get("flood_margin_bits")
        # the bound is 2m - log2(64) - log2(q): it reaches 0 bits at log2(q) = its value for one reply
        q = None if margin is None else statistical_bits(margin, 1)
        if margin is None or margin <= 0:
            per_reply = "its flood is below the evaluation error, so one reply shows the weights' error"
        elif q < 1:
            per_reply = f"its flood is only {margin} bits above the evaluation error, a bound spent by one reply"
        else:
            per_reply = (f"its flood is {margin} bits above the evaluation error per reply, and the "
                         f"statistical bound is spent after about 2^{q:.0f} replies")
        return (f"he: circuit_privacy='flood' falls short of its {self.statistical_security}-bit target on these "
                f"parameters ({params.describe()}): {per_reply}; nothing is claimed about the weights "
                f"({rep['guarantee']}) and no query cap is enforced. circuit_privacy='fast' makes the same claim "
                f"on the smallest parameters, with no flood margin at all")


def statistical_bits(margin_bits: float, replies: int) -> float:
    """The Li-Micciancio-Schultz-Sorrell bound (module docstring): bits of statistical security that a flood
    `margin_bits` above the evaluation error keeps over `replies` decryptions, 2 m - log2(64 q)."""
    return 2 * margin_bits - math.log2(64 * replies)


def evaluation_noise_terms(params) -> dict:
    """The two parts of the evaluation-error estimate (logit units), from the CKKS parameters:

    * `logit`: one rescale's rounding error, in slots, has std sqrt(N/12 * (1 + 2N/3)) ~ N/sqrt(18) (uniform
      rounding of c0 + c1*s, ternary secret of weight 2N/3); bounded at TAIL_SIGMAS, times a 2^GAIN_BITS
      allowance for the network's gain and the other (smaller) terms (weight encoding at 2^weight_bits, fresh
      encryption noise at the input scale), over the smaller of the chain's scale and the output scale;
    * `masked`: a masked slot keeps the 0/1 mask's encoding error (std sqrt(N/12) / 2^mask_bits) times the value
      that was there (< 2^value_bits, the published sound bound) plus the mask level's own rescale error.
    """
    N = params.N
    rescale = TAIL_SIGMAS * N / math.sqrt(18.0)
    encode = TAIL_SIGMAS * math.sqrt(N / 12.0)
    fresh = TAIL_SIGMAS * N * FRESH_SIGMA * math.sqrt(4.0 / 3.0)
    t = params.scale_bits
    t_out = params.output_scale_bits or t
    t_in = params.input_scale_bits or t
    mb = params.notes.get("mask_bits") if isinstance(params.notes, dict) else None
    if mb is None:
        mb = BATCH_MASK_BITS if params.packing == "batch" else t
    logit = 2.0 ** GAIN_BITS * (fresh / 2.0 ** t_in + rescale / 2.0 ** min(t, t_out))
    masked = encode * 2.0 ** (params.value_bits - mb) + rescale / 2.0 ** t_out
    return {"logit": logit, "masked": masked}
