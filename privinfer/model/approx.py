"""Make a model HE-friendly: ReLU -> polynomial, MaxPool -> AvgPool, BatchNorm folded; then fine-tune.

HE (CKKS) evaluates additions and multiplications only. `make_he_friendly` rewrites a torch model so that
every layer is one of those, and keeps it an ordinary, trainable torch module (activations become
`privinfer.model.torch_layers.Square` / `PolyAct`, which `compile_model` turns into `ir.Poly`):

* `activation="square"`: x² (CryptoNets);
* `activation="poly2"` / `"poly3"`: the least-squares polynomial of degree 2 / 3 fitted to ReLU on the range
  each ReLU actually sees. The range is `input_range=(lo, hi)` for every ReLU, or calibrated per ReLU by
  running `input_range=<calibration batch>` through the model (0.1% / 99.9% quantiles of each ReLU's input,
  so one outlier does not flatten the fit), or (-3, 3) when nothing is given;
* MaxPool2d(k, s) -> AvgPool2d(k, s);  BatchNorm directly after a Conv/Linear is folded into it.

A polynomial differs from ReLU away from zero, so accuracy usually drops; `finetune` recovers it with a few
epochs of training (Adam, cross-entropy, gradient clipping, tqdm progress bar) and reports the accuracy
before and after. `fit_relu_graph` does the same rewrite on an IR Graph (for the planner), without training.
"""
from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from ..errors import ShapeError, UnsupportedLayerError
from .ir import AvgPool2d, Graph, MaxPool2d, Poly, ReLU
from .torch_layers import PolyAct, Square

ACTIVATIONS = ("square", "poly2", "poly3")
DEFAULT_RANGE = (-3.0, 3.0)


def fit_relu_poly(degree: int, lo: float, hi: float, points: int = 2001) -> tuple[float, ...]:
    """Least-squares coefficients (low degree first) of a degree-`degree` polynomial ~ ReLU on [lo, hi]."""
    lo, hi = float(lo), float(hi)
    if not (np.isfinite(lo) and np.isfinite(hi)) or hi <= lo:
        raise ShapeError(f"fit range must be finite with lo < hi, got ({lo}, {hi})")
    x = np.linspace(lo, hi, points)
    c = np.polynomial.polynomial.polyfit(x, np.maximum(x, 0.0), int(degree))
    return tuple(float(v) for v in c)


def _activation_module(activation: str, rng: tuple[float, float]) -> nn.Module:
    if activation == "square":
        return Square()
    return PolyAct(fit_relu_poly(2 if activation == "poly2" else 3, *rng))


def _check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise UnsupportedLayerError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")


def _fold_bn(seq: nn.Sequential) -> None:
    """Fold BatchNorm that directly follows Conv2d/Linear inside a Sequential (in place)."""
    names = list(seq._modules)
    for i, name in enumerate(names):
        m = seq._modules[name]
        if isinstance(m, nn.Sequential):
            _fold_bn(m)
            continue
        if not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) or i == 0:
            continue
        prev = seq._modules[names[i - 1]]
        if not isinstance(prev, (nn.Conv2d, nn.Linear)) or m.running_mean is None:
            raise UnsupportedLayerError(f"BatchNorm {name} does not follow a Conv2d/Linear; cannot fold it")
        with torch.no_grad():
            inv = (m.weight if m.weight is not None else torch.ones_like(m.running_var)) / \
                torch.sqrt(m.running_var + m.eps)
            shift = m.bias if m.bias is not None else torch.zeros_like(m.running_mean)
            shape = (-1,) + (1,) * (prev.weight.dim() - 1)
            prev.weight.mul_(inv.reshape(shape))
            b = prev.bias if prev.bias is not None else torch.zeros_like(m.running_mean)
            new_b = (b - m.running_mean) * inv + shift
            if prev.bias is None:
                prev.bias = nn.Parameter(new_b)
            else:
                prev.bias.copy_(new_b)
        seq._modules[name] = nn.Identity()


def _relu_ranges(model: nn.Module, data, quantile: float = 0.001) -> dict[str, tuple[float, float]]:
    """Per-ReLU input range on calibration data (robust quantiles)."""
    seen: dict[str, list] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.ReLU):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: seen.setdefault(name, []).append(inp[0].detach().reshape(-1))))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            X = torch.as_tensor(np.asarray(data), dtype=torch.float32)
            for i in range(0, len(X), 256):
                model(X[i:i + 256])
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = {}
    for name, vals in seen.items():
        v = torch.cat(vals).double().numpy()
        lo, hi = np.quantile(v, [quantile, 1 - quantile])
        lo, hi = float(min(lo, 0.0)), float(max(hi, 0.0))
        if hi - lo < 1e-6:
            lo, hi = lo - 1.0, hi + 1.0
        out[name] = (lo, hi)
    return out


def make_he_friendly(model: nn.Module, activation: str = "square", input_range=None, *,
                     input_shape=None) -> nn.Module:
    """A copy of `model` with ReLU -> square/poly, MaxPool -> AvgPool, BatchNorm folded (see module doc).

    `input_range`: None, a pair (lo, hi), or calibration data (a batch shaped like the model's input).
    A class model (not an `nn.Sequential`) is first compiled and rebuilt as an `nn.Sequential`, so that
    BatchNorm and functional calls in its `forward` (F.relu, F.max_pool2d) are rewritten too; it needs
    `input_shape` (C, H, W) when it starts with a convolution (taken from calibration data if given).
    The returned module is trainable, carries `input_shape` (and `input_range`) if known, and records the
    fitted ranges in `he_ranges` ({relu module name: (lo, hi)}).
    """
    _check_activation(activation)
    if not isinstance(model, nn.Module):
        raise UnsupportedLayerError(f"make_he_friendly needs a torch nn.Module, got {type(model).__name__}")
    calibration = input_range is not None and not (isinstance(input_range, (tuple, list)) and len(input_range) == 2
                                                   and np.isscalar(input_range[0]))
    if not isinstance(model, nn.Sequential):
        from .compile import compile_model
        from .torch_layers import sequential_from_graph
        if input_shape is None and getattr(model, "input_shape", None) is None and calibration:
            input_shape = np.asarray(input_range).shape[1:]
        model = sequential_from_graph(compile_model(model, input_shape))
    m = copy.deepcopy(model)
    m.eval()
    if isinstance(m, nn.Sequential):
        _fold_bn(m)
    ranges: dict[str, tuple[float, float]] = {}
    if activation != "square":
        if input_range is None:
            ranges = {n: DEFAULT_RANGE for n, mod in m.named_modules() if isinstance(mod, nn.ReLU)}
        elif isinstance(input_range, (tuple, list)) and len(input_range) == 2 and np.isscalar(input_range[0]):
            ranges = {n: (float(input_range[0]), float(input_range[1]))
                      for n, mod in m.named_modules() if isinstance(mod, nn.ReLU)}
        else:
            # calibrate on the model as the data will flow through it: pools replaced first
            _replace(m, "square", {}, pools_only=True)
            ranges = _relu_ranges(m, input_range)
    _replace(m, activation, ranges)
    for name, mod in m.named_modules():
        if isinstance(mod, (nn.ReLU, nn.MaxPool2d, nn.BatchNorm1d, nn.BatchNorm2d)):
            raise UnsupportedLayerError(f"could not make {name} ({type(mod).__name__}) HE-friendly")
    if hasattr(model, "input_shape"):
        m.input_shape = tuple(model.input_shape)
    if calibration and getattr(model, "input_range", None) is None:  # publish what it was calibrated on
        X = np.asarray(input_range, dtype=np.float64)
        lo, hi = float(X.min()), float(X.max())
        # a batch rarely hits the ends of the true range: widen to the usual one it falls in
        for a, b in ((0.0, 1.0), (-1.0, 1.0)):
            if a <= lo and hi <= b:
                lo, hi = a, b
                break
        if lo < hi:
            m.input_range = (lo, hi)
    m.he_ranges = ranges
    return m


def _replace(module: nn.Module, activation: str, ranges: dict, prefix: str = "", pools_only: bool = False) -> None:
    for name, child in list(module.named_children()):
        full = f"{prefix}.{name}" if prefix else name
        if isinstance(child, nn.ReLU) and not pools_only:
            setattr(module, name, _activation_module(activation, ranges.get(full, DEFAULT_RANGE)))
        elif isinstance(child, nn.MaxPool2d):
            if child.dilation not in (1, (1, 1)) or child.ceil_mode:
                raise UnsupportedLayerError(f"MaxPool2d {full} with dilation/ceil_mode has no AvgPool equivalent")
            setattr(module, name, nn.AvgPool2d(child.kernel_size, child.stride or child.kernel_size, child.padding))
        else:
            _replace(child, activation, ranges, full, pools_only)


def accuracy(model: nn.Module, X, y, batch: int = 512) -> float:
    model.eval()
    X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y)).long()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(X), batch):
            correct += int((model(X[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return correct / max(1, len(X))


def finetune(model: nn.Module, data: tuple, epochs: int = 3, lr: float = 1e-3, progress: bool = True, *,
             batch_size: int = 64, clip: float | None = 1.0, val: tuple | None = None, seed: int = 0) -> dict:
    """Train `model` in place on data=(X, y) to recover the accuracy lost to polynomial activations.

    Returns {"accuracy_before", "accuracy_after", "epochs", "final_loss"} measured on `val` (default: data).
    """
    X, y = data
    X = torch.as_tensor(np.asarray(X), dtype=torch.float32)
    y = torch.as_tensor(np.asarray(y)).long()
    if len(X) != len(y) or len(X) == 0:
        raise ShapeError(f"finetune needs matching non-empty X and y, got {len(X)} and {len(y)}")
    vX, vy = val if val is not None else (X, y)
    before = accuracy(model, vX, vy)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.CrossEntropyLoss()
    steps = epochs * -(-len(X) // batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="finetune", unit="batch", leave=False)
    last = float("nan")
    try:
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(X), generator=gen)
            for i in range(0, len(X), batch_size):
                idx = perm[i:i + batch_size]
                opt.zero_grad()
                loss = loss_fn(model(X[idx]), y[idx])
                if not torch.isfinite(loss):
                    raise ShapeError("fine-tuning diverged (non-finite loss): lower lr or narrow the input range")
                loss.backward()
                if clip:
                    nn.utils.clip_grad_norm_(model.parameters(), clip)
                opt.step()
                last = float(loss.detach())
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{last:.3f}")
    finally:
        if bar is not None:
            bar.close()
    model.eval()
    after = accuracy(model, vX, vy)
    report = {"accuracy_before": before, "accuracy_after": after, "epochs": epochs, "final_loss": last}
    if progress:
        print(f"finetune: accuracy {before:.4f} -> {after:.4f} after {epochs} epoch(s)")
    return report


def fit_relu_graph(graph: Graph, activation: str = "poly2", input_range=None) -> Graph:
    """The IR version: ReLU -> Poly fitted on each ReLU's input range, MaxPool -> AvgPool (no training).

    `input_range`: None (-3, 3), a pair, or calibration data (a batch for `graph`), as in `make_he_friendly`.
    """
    _check_activation(activation)
    from .reference import apply_layer, check_input
    layers, names = list(graph.layers), list(graph.names)
    per_layer: dict[int, tuple[float, float]] = {}
    if input_range is not None and not (isinstance(input_range, (tuple, list)) and len(input_range) == 2
                                        and np.isscalar(input_range[0])):
        t = torch.from_numpy(check_input(graph, input_range))
        with torch.no_grad():
            for i, layer in enumerate(layers):
                if isinstance(layer, ReLU):
                    v = t.reshape(-1).numpy()
                    lo, hi = np.quantile(v, [0.001, 0.999])
                    per_layer[i] = (float(min(lo, 0.0)), float(max(hi, 0.0)) or 1.0)
                if isinstance(layer, MaxPool2d):
                    layer = AvgPool2d(layer.kernel, layer.stride)
                t = apply_layer(layer if not isinstance(layer, ReLU) else ReLU(), t)
    out = []
    for i, layer in enumerate(layers):
        if isinstance(layer, ReLU):
            if activation == "square":
                out.append(Poly.square())
            else:
                rng = per_layer.get(i) or (tuple(input_range) if input_range is not None else DEFAULT_RANGE)
                out.append(Poly(fit_relu_poly(2 if activation == "poly2" else 3, *rng)))
        elif isinstance(layer, MaxPool2d):
            out.append(AvgPool2d(layer.kernel, layer.stride))
        else:
            out.append(layer)
    return graph.replace(out, names)


__all__ = ["make_he_friendly", "finetune", "fit_relu_poly", "fit_relu_graph", "accuracy", "ACTIVATIONS"]
