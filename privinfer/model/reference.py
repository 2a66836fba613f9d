"""The plaintext reference executor: the ground truth every protocol's logits are compared with."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputRangeError, ShapeError
from .ir import AvgPool2d, Conv2d, Flatten, Graph, Linear, MaxPool2d, Poly, ReLU


def apply_layer(layer, x: torch.Tensor) -> torch.Tensor:
    """One IR layer on a batched float64 tensor."""
    if isinstance(layer, Conv2d):
        t, b, l, r = layer.padding
        x = F.pad(x, (l, r, t, b))
        return F.conv2d(x, torch.from_numpy(layer.weight), torch.from_numpy(layer.bias), stride=layer.stride)
    if isinstance(layer, Linear):
        return x @ torch.from_numpy(layer.weight).T + torch.from_numpy(layer.bias)
    if isinstance(layer, AvgPool2d):
        return F.avg_pool2d(x, layer.kernel, layer.stride, layer.padding, count_include_pad=True)
    if isinstance(layer, MaxPool2d):
        return F.max_pool2d(x, layer.kernel, layer.stride)
    if isinstance(layer, ReLU):
        return torch.clamp_min(x, 0.0)
    if isinstance(layer, Poly):
        out = torch.full_like(x, layer.coeffs[-1])
        for c in reversed(layer.coeffs[:-1]):
            out = out * x + c
        return out
    if isinstance(layer, Flatten):
        return x.reshape(x.shape[0], -1)
    raise ShapeError(f"reference executor cannot run {type(layer).__name__}")


def check_input(graph: Graph, x) -> np.ndarray:
    """Return x as a float64 batch (B, *input_shape); a single unbatched sample gets B=1."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.shape == tuple(graph.input_shape):
        arr = arr[None]
    if arr.ndim != len(graph.input_shape) + 1 or arr.shape[1:] != tuple(graph.input_shape):
        raise ShapeError(f"input shape {arr.shape} does not match the model's (B, {', '.join(map(str, graph.input_shape))})")
    if not np.all(np.isfinite(arr)):
        raise ShapeError("input holds non-finite values")
    return arr


def check_input_range(graph: Graph, batch: np.ndarray) -> None:
    """Refuse values outside the range the graph publishes, naming the likely cause.

    Out-of-range inputs are the commonest silent failure (uint8 pixels into a [0, 1] model): `he` and `ss`
    only guarantee that their arithmetic does not wrap inside the published range, and even `plain` answers
    nonsense outside it. A small tolerance (0.1 % of the width) absorbs rounding from the user's scaling.
    """
    if graph.input_range is None or batch.size == 0:
        return
    lo, hi = graph.input_range
    tol = 1e-3 * (hi - lo)
    vmin, vmax = float(batch.min()), float(batch.max())
    if vmin >= lo - tol and vmax <= hi + tol:
        return
    cause = "scale it the way the model's training data was scaled"
    unit = vmin >= 0 and (hi - lo) <= 1.0 + 1e-9 and 1.5 < vmax
    if unit and vmax <= 255.0 and (np.all(batch == np.round(batch)) or vmax > 100.0):
        cause = "pixels look like 0-255; divide by 255"
    elif unit and vmax <= 100.0:
        cause = "values look like 0-100 percent; divide by 100"
    elif vmin < lo - tol and lo >= 0 and vmin > -10 and vmax < 10:
        cause = "values look standardized (mean/std); feed the raw range instead"
    raise InputRangeError(f"input values span [{vmin:.4g}, {vmax:.4g}] but the model expects [{lo:g}, {hi:g}] "
                          f"({cause})")


def run_reference(graph: Graph, x, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Run layers[start:stop] on a batch in float64 and return a numpy array."""
    stop = len(graph.layers) if stop is None else stop
    sub = graph.slice(start, stop)
    t = torch.from_numpy(check_input(sub, x))
    with torch.no_grad():
        for layer in sub.layers:
            t = apply_layer(layer, t)
    return t.numpy()
