"""The layer kinds: one small frozen dataclass per kind, and the one table (`LAYER_KINDS`) that maps a kind's
name to its class.

Why apart from `ir.py`: a layer knows its own parameters, shape rule and JSON spec; the Graph (`ir.py`) only
chains them and owns the file format. New code tells kinds apart by `LAYER_KINDS` or a layer's own `kind`;
some protocol modules still keep short lists of the kinds they support (noted, not yet moved here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np

from ..errors import ShapeError

Shape = tuple[int, ...]

def _pair(v) -> tuple[int, int]:
    if isinstance(v, (tuple, list)):
        if len(v) != 2:
            raise ShapeError(f"expected a pair, got {v!r}")
        return int(v[0]), int(v[1])
    return int(v), int(v)


def check_range(r) -> tuple[float, float] | None:
    """None, or a finite (lo, hi) with lo < hi, as floats."""
    if r is None:
        return None
    try:
        lo, hi = (float(v) for v in r)
    except (TypeError, ValueError):
        raise ShapeError(f"input_range must be (lo, hi), got {r!r}") from None
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ShapeError(f"input_range must be finite with lo < hi, got {r!r}")
    return lo, hi


def _positive(v: tuple, name: str) -> tuple:
    if min(v) < 1:
        raise ShapeError(f"{name} must be >= 1, got {v}")
    return v


def _as_array(a, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ShapeError(f"{name} holds non-finite values")
    return arr


def _set_weight_and_bias(layer, ndim: int, name: str, unit: str) -> None:
    """Check and store a weighted layer's weight (`ndim`-D float64) and bias (one per output; None: zeros)."""
    w = _as_array(layer.weight, f"{name} weight")
    if w.ndim != ndim:
        raise ShapeError(f"{name} weight must be {ndim}-D, got shape {w.shape}")
    b = np.zeros(w.shape[0]) if layer.bias is None else _as_array(layer.bias, f"{name} bias")
    if b.shape != (w.shape[0],):
        raise ShapeError(f"{name} bias shape {b.shape} does not match {w.shape[0]} {unit}")
    object.__setattr__(layer, "weight", w)
    object.__setattr__(layer, "bias", b)


@dataclass(frozen=True, eq=False)
class Conv2d:
    """2-D convolution; `padding` is (top, bottom, left, right) so one-sided pads fold in."""
    weight: np.ndarray  # (out_channels, in_channels, kh, kw)
    bias: np.ndarray  # (out_channels,)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    kind = "conv2d"

    def __post_init__(self):
        _set_weight_and_bias(self, 4, "conv", "maps")
        object.__setattr__(self, "stride", _positive(_pair(self.stride), "conv stride"))
        p = tuple(int(v) for v in self.padding)
        if len(p) == 2:
            p = (p[0], p[0], p[1], p[1])
        if len(p) != 4 or min(p) < 0:
            raise ShapeError(f"padding must be (top, bottom, left, right) >= 0, got {self.padding}")
        object.__setattr__(self, "padding", p)

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.weight.shape[2]), int(self.weight.shape[3])

    def out_shape(self, s: Shape) -> Shape:
        if len(s) != 3 or s[0] != self.weight.shape[1]:
            raise ShapeError(f"conv2d expects ({self.weight.shape[1]}, H, W), got {s}")
        t, b, l, r = self.padding
        kh, kw = self.kernel
        h = (s[1] + t + b - kh) // self.stride[0] + 1
        w = (s[2] + l + r - kw) // self.stride[1] + 1
        if h <= 0 or w <= 0:
            raise ShapeError(f"conv2d kernel {self.kernel} does not fit input {s}")
        return (int(self.weight.shape[0]), h, w)

    def params(self) -> dict:
        return {"stride": list(self.stride), "padding": list(self.padding),
                "in_channels": int(self.weight.shape[1]), "out_channels": int(self.weight.shape[0]),
                "kernel": list(self.kernel)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}


@dataclass(frozen=True, eq=False)
class Linear:
    """Fully connected layer y = W x + b on a flat vector."""
    weight: np.ndarray  # (out_features, in_features)
    bias: np.ndarray
    kind = "linear"

    def __post_init__(self):
        _set_weight_and_bias(self, 2, "linear", "outputs")

    def out_shape(self, s: Shape) -> Shape:
        if len(s) != 1 or s[0] != self.weight.shape[1]:
            raise ShapeError(f"linear expects ({self.weight.shape[1]},), got {s}")
        return (int(self.weight.shape[0]),)

    def params(self) -> dict:
        return {"in_features": int(self.weight.shape[1]), "out_features": int(self.weight.shape[0])}

    def arrays(self) -> dict[str, np.ndarray]:
        return {"weight": self.weight, "bias": self.bias}


def _pool_out(s: Shape, kernel, stride, padding, name) -> Shape:
    if len(s) != 3:
        raise ShapeError(f"{name} expects (C, H, W), got {s}")
    h = (s[1] + 2 * padding[0] - kernel[0]) // stride[0] + 1
    w = (s[2] + 2 * padding[1] - kernel[1]) // stride[1] + 1
    if h <= 0 or w <= 0:
        raise ShapeError(f"{name} kernel {kernel} does not fit input {s}")
    return (s[0], h, w)


@dataclass(frozen=True)
class AvgPool2d:
    """Average pooling (zero padding counted in the average, as torch's default)."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int] = (0, 0)
    kind = "avgpool2d"

    def __post_init__(self):
        for f in ("kernel", "stride", "padding"):
            object.__setattr__(self, f, _pair(getattr(self, f)))
        _positive(self.kernel + self.stride, "avgpool kernel/stride")
        if min(self.padding) < 0:
            raise ShapeError(f"avgpool padding must be >= 0, got {self.padding}")

    def out_shape(self, s: Shape) -> Shape:
        return _pool_out(s, self.kernel, self.stride, self.padding, "avgpool2d")

    def params(self) -> dict:
        return {"kernel": list(self.kernel), "stride": list(self.stride), "padding": list(self.padding)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}


@dataclass(frozen=True)
class MaxPool2d:
    """Max pooling without padding."""
    kernel: tuple[int, int]
    stride: tuple[int, int]
    kind = "maxpool2d"

    def __post_init__(self):
        for f in ("kernel", "stride"):
            object.__setattr__(self, f, _pair(getattr(self, f)))
        _positive(self.kernel + self.stride, "maxpool kernel/stride")

    def out_shape(self, s: Shape) -> Shape:
        return _pool_out(s, self.kernel, self.stride, (0, 0), "maxpool2d")

    def params(self) -> dict:
        return {"kernel": list(self.kernel), "stride": list(self.stride)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}


@dataclass(frozen=True)
class ReLU:
    """max(x, 0), elementwise."""
    kind = "relu"

    def out_shape(self, s: Shape) -> Shape:
        return s

    def params(self) -> dict:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}


@dataclass(frozen=True)
class Poly:
    """Elementwise polynomial sum_i coeffs[i] * x**i (coefficients from low to high degree)."""
    coeffs: tuple[float, ...]
    kind = "poly"

    def __post_init__(self):
        c = tuple(float(v) for v in self.coeffs)
        if not c or not all(np.isfinite(c)):
            raise ShapeError(f"poly needs finite coefficients, got {self.coeffs!r}")
        while len(c) > 1 and c[-1] == 0.0:
            c = c[:-1]
        object.__setattr__(self, "coeffs", c)

    @classmethod
    def square(cls) -> "Poly":
        return cls((0.0, 0.0, 1.0))

    @property
    def degree(self) -> int:
        return len(self.coeffs) - 1

    def out_shape(self, s: Shape) -> Shape:
        return s

    def params(self) -> dict:
        return {"coeffs": list(self.coeffs)}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}


@dataclass(frozen=True)
class Flatten:
    """(C, H, W) -> (C*H*W,) in row-major (torch) order."""
    kind = "flatten"

    def out_shape(self, s: Shape) -> Shape:
        return (int(np.prod(s)),)

    def params(self) -> dict:
        return {}

    def arrays(self) -> dict[str, np.ndarray]:
        return {}


Layer = Union[Conv2d, Linear, AvgPool2d, MaxPool2d, ReLU, Poly, Flatten]
LAYER_KINDS: dict[str, type] = {c.kind: c for c in (Conv2d, Linear, AvgPool2d, MaxPool2d, ReLU, Poly, Flatten)}
WEIGHTED_KINDS = ("conv2d", "linear")
