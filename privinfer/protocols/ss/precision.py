"""How many fractional bits `ss` may use on an architecture: CrypTen's local truncation can wrap the ring.

Why a module of its own: the cap is a property of the public architecture (how many values each image
truncates). The `ss` protocol, `hybrid`'s 2PC segments and the tests use it; it needs no CrypTen.
"""
from __future__ import annotations

import math

import numpy as np

from ...errors import ParameterError
from ...model.ir import Graph
from .lowering import lower

MAX_PRECISION_BITS = 20
WRAP_MARGIN_BITS = 10  # at most 2^-10 probability per image that some truncation wraps
MEAN_ABS_Y = 2.0       # assumed mean |activation| (measured on the zoo: 0.84 minionn-mnist, 1.1 minionn-cifar)
TRUNCATING = ("conv2d", "linear", "relu", "poly", "avgpool2d")
"""Why `precision_bits` f is capped, and where the cap comes from.

Ring Z_2^64, signed. After a product, a value y sits at scale 2^(2f) until CrypTen's two-party
truncation, which divides each party's share locally (`ArithmeticSharedTensor.div_` with world size 2).
The shares are s0 = r (uniform) and s1 = y·2^(2f) - r; local division is exact up to ±1 unless
s0 + s1 wraps around 2^64, which happens with probability |y|·2^(2f) / 2^64 per element; the element
is then off by about 2^(64-f): a garbage logit, not a rounding error (and a client that sees how often
it happens learns about |y|). Per image the wrap probability is at most Σ|y|·2^(2f-64) over the
truncated elements (outputs of the TRUNCATING layers). Measured (Σ|y| per image; wrap bound at f=16/20):
    deepsecure-mnist  2.0e3   4.7e-7 / 1.2e-4
    minionn-mnist     1.1e4   2.6e-6 / 6.5e-4      (f=24: 0.17; f=30: certain; per element at f=30
    minionn-cifar     4.1e5   9.5e-5 / 2.4e-2       with |y|=4: 0.25)
So one constant cannot serve every network. `max_precision_bits(graph)` asks for at most 2^-WRAP_MARGIN_BITS
per image with Σ|y| <= MEAN_ABS_Y · N, N the number of truncated elements, which the public architecture
fixes: 2f <= 64 - WRAP_MARGIN_BITS - log2(MEAN_ABS_Y · N), and never above MAX_PRECISION_BITS = 20.
That gives 20 for deepsecure-mnist, 19 for minionn-mnist, 17 for minionn-cifar; the default 16 fits all.
"""


def max_precision_bits(graph: Graph) -> int:
    """The largest `precision_bits` this architecture allows (see TRUNCATING); public, weight-free."""
    g = graph.replace(lower(graph))
    n = sum(int(np.prod(shape)) for layer, shape in zip(g.layers, g.shapes[1:]) if layer.kind in TRUNCATING)
    bits = (64 - WRAP_MARGIN_BITS - math.log2(MEAN_ABS_Y * max(n, 1))) // 2
    return int(max(1, min(MAX_PRECISION_BITS, bits)))


def check_precision(graph: Graph, bits: int) -> None:
    cap = max_precision_bits(graph)
    if bits > cap:
        raise ParameterError(
            f"precision_bits={bits} is above {cap}, the cap for this network: CrypTen's two-party truncation "
            f"wraps around the 64-bit ring with probability |y|*2^(2f-64) per value, and this network "
            f"truncates enough values per image that f>{cap} makes a garbage result likelier than 2^-{WRAP_MARGIN_BITS}")


