"""Sound bounds on every intermediate value, for inputs anywhere in the graph's published input range.

Why: `he` (CKKS) and `ss` (fixed point on a 64-bit ring) compute modulo a number. A value larger than the
room the protocol reserved wraps around and decrypts/reconstructs to a confident wrong answer, with no
error. Interval arithmetic over the whole input box [lo, hi]^n gives a bound that holds for *every* input in
the range (not just the test set), so a protocol can size its parameters from it, or refuse to serve.

Each layer maps a box (per-element lower, upper) to a box: affine layers exactly (centre ± |W|·radius),
ReLU/max/average pooling monotonically, polynomials by their extrema on the interval. `accumulator` is the
largest sum of |w·x| + |b| a weighted layer forms before any rescaling/truncation (the ring must hold it).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .ir import AvgPool2d, Conv2d, Flatten, Graph, Linear, MaxPool2d, Poly, ReLU


@dataclass(frozen=True)
class LayerBound:
    name: str
    kind: str
    peak: float  # max |value| of the layer's output over the input range
    accumulator: float  # max sum |w x| + |b| inside the layer (weighted layers), else == peak


def poly_interval(coeffs, lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Elementwise exact range of the polynomial on [lo, hi] (extrema at the ends or the critical points)."""
    p = np.polynomial.Polynomial(coeffs)
    cands = [p(lo), p(hi)]
    for r in p.deriv().roots() if len(coeffs) > 2 else []:
        if abs(r.imag) < 1e-12:
            r = float(r.real)
            inside = (lo <= r) & (r <= hi)
            cands.append(np.where(inside, p(r), p(lo)))
    stack = np.stack(cands)
    return stack.min(0), stack.max(0)


def _affine(layer, lo: torch.Tensor, hi: torch.Tensor):
    c, r = (lo + hi) / 2, (hi - lo) / 2
    m = torch.maximum(lo.abs(), hi.abs())
    W, b = torch.from_numpy(layer.weight), torch.from_numpy(layer.bias)
    if isinstance(layer, Conv2d):
        t, bo, le, ri = layer.padding
        pad = lambda x: F.pad(x, (le, ri, t, bo))  # noqa: E731
        out_c = F.conv2d(pad(c), W, b, stride=layer.stride)
        out_r = F.conv2d(pad(r), W.abs(), None, stride=layer.stride)
        acc = F.conv2d(pad(m), W.abs(), b.abs(), stride=layer.stride)
    else:
        out_c, out_r, acc = c @ W.T + b, r @ W.abs().T, m @ W.abs().T + b.abs()
    return out_c - out_r, out_c + out_r, float(acc.max())


def _walk(graph: Graph, input_range=None):
    """(layer, lo, hi, acc) per layer: the per-element output box of every layer (see the module docstring)."""
    rng = input_range if input_range is not None else graph.input_range
    if rng is None:
        raise ValueError("the graph publishes no input range; pass input_range=(lo, hi)")
    lo = torch.full((1, *graph.input_shape), float(rng[0]), dtype=torch.float64)
    hi = torch.full((1, *graph.input_shape), float(rng[1]), dtype=torch.float64)
    yield None, lo, hi, None
    for layer in graph.layers:
        acc = None
        if isinstance(layer, (Conv2d, Linear)):
            lo, hi, acc = _affine(layer, lo, hi)
        elif isinstance(layer, ReLU):
            lo, hi = lo.clamp_min(0), hi.clamp_min(0)
        elif isinstance(layer, MaxPool2d):
            lo, hi = F.max_pool2d(lo, layer.kernel, layer.stride), F.max_pool2d(hi, layer.kernel, layer.stride)
        elif isinstance(layer, AvgPool2d):
            lo = F.avg_pool2d(lo, layer.kernel, layer.stride, layer.padding, count_include_pad=True)
            hi = F.avg_pool2d(hi, layer.kernel, layer.stride, layer.padding, count_include_pad=True)
        elif isinstance(layer, Poly):
            a, b = poly_interval(layer.coeffs, lo.numpy(), hi.numpy())
            lo, hi = torch.from_numpy(a), torch.from_numpy(b)
        elif isinstance(layer, Flatten):
            lo, hi = lo.reshape(1, -1), hi.reshape(1, -1)
        yield layer, lo, hi, acc


def interval_bounds(graph: Graph, input_range=None) -> list[LayerBound]:
    """One `LayerBound` per layer, for every input in `input_range` (default: the graph's published range)."""
    out = []
    walk = _walk(graph, input_range)
    next(walk)
    for name, (layer, lo, hi, acc) in zip(graph.names, walk):
        peak = float(torch.maximum(lo.abs(), hi.abs()).max())
        out.append(LayerBound(name, layer.kind, peak, peak if acc is None else max(acc, peak)))
    return out


def input_box(graph: Graph, index: int, input_range=None) -> tuple[np.ndarray, np.ndarray]:
    """The per-element (lo, hi) of the value entering layer `index` (flat), for inputs in the range."""
    for i, (_, lo, hi, _) in enumerate(_walk(graph, input_range)):
        if i == index:
            return lo.reshape(-1).numpy(), hi.reshape(-1).numpy()
    raise IndexError(f"layer {index} is not in the graph")


def peak_bits(graph: Graph, input_range=None) -> int:
    """Integer bits of the largest |value| any layer outputs for inputs in the range (at least 1)."""
    peak = max([b.peak for b in interval_bounds(graph, input_range)] + [1.0])
    return max(1, int(np.ceil(np.log2(peak))))


def check_fixed_point(graph: Graph, frac_bits: int, ring_bits: int = 64, what: str = "fixed point") -> None:
    """Refuse when a product inside a weighted layer could wrap a signed `ring_bits` ring.

    Fixed-point products carry 2·frac_bits fractional bits before truncation, so the largest accumulator
    (sum |w x| + |b|) times 2^(2·frac_bits) must stay below 2^(ring_bits - 2) (sign bit plus one bit of
    slack for the truncation's rounding). Without a published input range nothing can be promised, so
    nothing is checked here (the client refuses non-finite input only).
    """
    from ..errors import ParameterError
    if graph.input_range is None:
        return
    limit = 2.0 ** (ring_bits - 2 - 2 * frac_bits)
    for b in interval_bounds(graph):
        if b.accumulator >= limit:
            lo, hi = graph.input_range
            raise ParameterError(
                f"{what}: layer {b.name} can reach {b.accumulator:.3g} for inputs in [{lo:g}, {hi:g}], beyond the "
                f"{limit:.3g} a {ring_bits}-bit ring holds at {frac_bits} fractional bits; lower precision_bits "
                f"or narrow the model's input_range")
