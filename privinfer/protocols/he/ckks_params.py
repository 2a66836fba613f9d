"""The CKKS parameter set (`HEParams`), the HE standard's 128-bit bounds and the prime-size constants.

Why apart from the searches (`params.py`, `latency_params.py`): the parameter set is also a wire format (sent
in WELCOME, checked by the client), and the context (`context.py`), the planner's cost model and the batch
engine need the data type and its bounds without importing the search that chooses it.

The 128-bit bounds (HomomorphicEncryption.org standard, ternary secret; SEAL enforces the same table):
N=4096: 109 bits, 8192: 218, 16384: 438, 32768: 881.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field

from ...errors import ParameterError

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


def _with_special(data: list[int], margin: int = SPECIAL_MARGIN_BITS) -> list[int]:
    """The data primes plus SEAL's special (key-switching) prime, `margin` bits above the largest."""
    return data + [min(MAX_PRIME_BITS, max(data) + margin)]


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


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


def params_digest(p: HEParams) -> str:
    """The parameter set as canonical JSON (what client and server compare, and tests pin)."""
    return json.dumps(p.to_json(), sort_keys=True)
