"""Compile a torch module into the layer IR.

Works on `nn.Sequential` and on any module `torch.fx` can trace into a chain. BatchNorm is folded into
the Conv/Linear before it, ZeroPad2d into the Conv after it; Dropout and Identity vanish. Anything else
is refused with an error that names it and lists what is supported.
"""
from __future__ import annotations

import operator
from typing import Any, Sequence

import numpy as np
import torch
from torch import fx, nn
import torch.nn.functional as F

from ..errors import ShapeError, UnsupportedLayerError
from .ir import Graph
from .layers import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Poly, ReLU, _pair
from .torch_layers import PolyAct, Square

SUPPORTED_MODULES = ("Conv2d", "Linear", "BatchNorm1d", "BatchNorm2d", "ReLU", "MaxPool2d", "AvgPool2d",
                     "AdaptiveAvgPool2d (evenly dividing)", "Flatten", "ZeroPad2d", "Dropout", "Identity",
                     "privinfer PolyAct/Square", "x*x, x**2, x.pow(2), relu, flatten/view(B, -1)")
_SKIPPED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)


def _unsupported(what: str) -> UnsupportedLayerError:
    return UnsupportedLayerError(f"unsupported layer {what}; supported: {', '.join(SUPPORTED_MODULES)}")


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().copy()


class _Builder:
    """Accumulates IR layers, folding BatchNorm and padding as they arrive."""

    def __init__(self):
        self.layers: list = []
        self.names: list[str] = []
        self.pending_pad: tuple[int, int, int, int] | None = None

    def add(self, layer, name: str):
        if self.pending_pad is not None:
            raise _unsupported(f"ZeroPad2d before {layer.kind} (only before Conv2d)")
        self.layers.append(layer)
        self.names.append(name)

    def module(self, m: nn.Module, name: str):
        if isinstance(m, _SKIPPED):
            return
        if isinstance(m, nn.Sequential):
            for child_name, child in m.named_children():
                self.module(child, f"{name}.{child_name}" if name else child_name)
            return
        if isinstance(m, nn.Conv2d):
            self.conv(m, name)
        elif isinstance(m, nn.Linear):
            self.add(Linear(_np(m.weight), None if m.bias is None else _np(m.bias)), name)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            self.fold_batchnorm(m, name)
        elif isinstance(m, nn.ReLU):
            self.add(ReLU(), name)
        elif isinstance(m, Square):
            self.add(Poly.square(), name)
        elif isinstance(m, PolyAct):
            self.add(Poly(tuple(m.coeffs.tolist())), name)
        elif isinstance(m, nn.MaxPool2d):
            if _pair(m.padding) != (0, 0) or _pair(m.dilation) != (1, 1) or m.ceil_mode:
                raise _unsupported(f"MaxPool2d with padding/dilation/ceil_mode ({name})")
            self.add(MaxPool2d(_pair(m.kernel_size), _pair(m.stride or m.kernel_size)), name)
        elif isinstance(m, nn.AvgPool2d):
            if m.ceil_mode or m.divisor_override is not None or (_pair(m.padding) != (0, 0) and not m.count_include_pad):
                raise _unsupported(f"AvgPool2d with ceil_mode/divisor_override/count_include_pad=False ({name})")
            self.add(AvgPool2d(_pair(m.kernel_size), _pair(m.stride or m.kernel_size), _pair(m.padding)), name)
        elif isinstance(m, nn.AdaptiveAvgPool2d):
            self.add(_AdaptivePending(m.output_size), name)
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise _unsupported(f"Flatten(start_dim={m.start_dim}, end_dim={m.end_dim}) ({name})")
            self.add(Flatten(), name)
        elif isinstance(m, nn.ZeroPad2d):
            left, right, top, bottom = (int(v) for v in m.padding)
            pad = (top, bottom, left, right)
            self.pending_pad = pad if self.pending_pad is None else tuple(a + b for a, b in zip(self.pending_pad, pad))
        else:
            raise _unsupported(f"{type(m).__name__} ({name or 'model'})")

    def conv(self, m: nn.Conv2d, name: str):
        if m.groups != 1 or _pair(m.dilation) != (1, 1) or m.padding_mode != "zeros":
            raise _unsupported(f"Conv2d with groups/dilation/padding_mode ({name})")
        if isinstance(m.padding, str):
            if m.padding == "valid":
                pad = (0, 0, 0, 0)
            else:  # 'same' (stride 1): extra pixel on the bottom/right, as torch does
                kh, kw = m.kernel_size
                pad = ((kh - 1) // 2, kh // 2, (kw - 1) // 2, kw // 2)
        else:
            ph, pw = _pair(m.padding)
            pad = (ph, ph, pw, pw)
        if self.pending_pad is not None:
            pad = tuple(a + b for a, b in zip(pad, self.pending_pad))
            self.pending_pad = None
        self.add(Conv2d(_np(m.weight), None if m.bias is None else _np(m.bias), _pair(m.stride), pad), name)

    def fold_batchnorm(self, bn: nn.Module, name: str):
        if self.pending_pad is not None:  # padded zeros would have to be normalised too
            raise _unsupported(f"{type(bn).__name__} after ZeroPad2d ({name})")
        prev = self.layers[-1] if self.layers else None
        if not isinstance(prev, (Conv2d, Linear)):
            raise _unsupported(f"{type(bn).__name__} not directly after Conv2d/Linear ({name})")
        if bn.running_mean is None:
            raise _unsupported(f"{type(bn).__name__} without running statistics ({name})")
        scale = _np(bn.weight) if bn.weight is not None else np.ones(bn.num_features)
        shift = _np(bn.bias) if bn.bias is not None else np.zeros(bn.num_features)
        inv = scale / np.sqrt(_np(bn.running_var) + bn.eps)
        if prev.weight.shape[0] != inv.shape[0]:
            raise ShapeError(f"{name}: BatchNorm over {inv.shape[0]} features after {prev.weight.shape[0]}")
        w = prev.weight * inv.reshape((-1,) + (1,) * (prev.weight.ndim - 1))
        b = (prev.bias - _np(bn.running_mean)) * inv + shift
        self.layers[-1] = Conv2d(w, b, prev.stride, prev.padding) if isinstance(prev, Conv2d) else Linear(w, b)

    def function(self, fn, args: Sequence, kwargs: dict, name: str):
        if fn in (F.relu, torch.relu):
            self.add(ReLU(), name)
        elif fn in (torch.flatten,) and _flatten_dims(args, kwargs) == (1, -1):
            self.add(Flatten(), name)
        elif fn is operator.mul and len(args) == 2 and args[0] is args[1]:
            self.add(Poly.square(), name)
        elif fn in (operator.pow, torch.pow, torch.square) and (fn is torch.square or args[1] == 2):
            self.add(Poly.square(), name)
        elif fn in (F.max_pool2d, F.avg_pool2d):
            # fx records every keyword of F.max_pool2d, defaults included: refuse only non-default values
            names_ = ("input", "kernel_size", "stride", "padding") + (
                ("dilation", "ceil_mode", "return_indices") if fn is F.max_pool2d
                else ("ceil_mode", "count_include_pad", "divisor_override"))
            given = {**dict(zip(names_, args)), **kwargs}
            defaults = {"stride": None, "padding": 0, "dilation": 1, "ceil_mode": False, "return_indices": False,
                        "count_include_pad": True, "divisor_override": None}
            odd = sorted(k for k, v in given.items() if k in defaults and k != "stride"
                         and (_pair(v) != _pair(defaults[k]) if k in ("padding", "dilation") else v != defaults[k]))
            if odd:
                raise _unsupported(f"{fn.__name__} with {', '.join(f'{k}={given[k]!r}' for k in odd)} ({name})")
            k = _pair(given["kernel_size"])
            s = given.get("stride")
            self.add((MaxPool2d if fn is F.max_pool2d else AvgPool2d)(k, _pair(s or k)), name)
        else:
            raise _unsupported(f"function {getattr(fn, '__name__', fn)} ({name})")

    def method(self, meth: str, args: Sequence, kwargs: dict, name: str):
        if meth in ("view", "reshape") and len(args) == 3 and _is_batch_size(args[1]) and args[2] == -1:
            self.add(Flatten(), name)
        elif meth == "flatten" and _flatten_dims(args, kwargs) == (1, -1):
            self.add(Flatten(), name)
        elif meth in ("relu",):
            self.add(ReLU(), name)
        elif meth == "pow" and args[1] == 2:
            self.add(Poly.square(), name)
        elif meth in ("size", "contiguous", "float"):
            return
        else:
            raise _unsupported(f"method .{meth}() ({name})")


def _flatten_dims(args: Sequence, kwargs: dict) -> tuple:
    """(start_dim, end_dim) of a traced flatten call."""
    start = args[1] if len(args) > 1 else kwargs.get("start_dim", 0)
    end = args[2] if len(args) > 2 else kwargs.get("end_dim", -1)
    return start, end


def _is_batch_size(arg) -> bool:
    """A traced `x.size(0)` / `x.shape[0]`: the batch dimension kept by view(B, -1)."""
    if not isinstance(arg, fx.Node):
        return False
    if arg.op == "call_method" and arg.target == "size":
        return (arg.args[1:] or [arg.kwargs.get("dim")])[0] == 0
    if arg.op == "call_function" and arg.target is operator.getitem:
        src = arg.args[0]
        return arg.args[1] == 0 and isinstance(src, fx.Node) and (
            (src.op == "call_function" and src.target is getattr and src.args[1] == "shape")
            or (src.op == "call_method" and src.target == "size" and len(src.args) == 1))
    return False


class _AdaptivePending:
    """AdaptiveAvgPool2d becomes a plain AvgPool2d once the input size is known."""
    kind = "adaptive"

    def __init__(self, output_size):
        if output_size is None or (isinstance(output_size, (tuple, list)) and None in output_size):
            raise _unsupported(f"AdaptiveAvgPool2d({output_size!r}): a size of None (keep the input's) is not supported")
        self.output_size = _pair(output_size)


_KNOWN = (nn.Conv2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d,
          nn.AdaptiveAvgPool2d, nn.Flatten, nn.ZeroPad2d, nn.Sequential, PolyAct, Square) + _SKIPPED
_RECURRENT = (nn.RNNBase, nn.RNNCellBase)


def _name_unsupported_modules(model: nn.Module) -> None:
    """Refuse a model holding a module the IR cannot express, naming the module (not a later symptom)."""
    for name, m in model.named_modules():
        if not name or isinstance(m, _KNOWN) or type(m).__module__.split(".")[0] != "torch":
            continue  # the model itself, supported layers, and user containers (checked via their children)
        if isinstance(m, _RECURRENT):
            raise UnsupportedLayerError(
                f"unsupported layer {type(m).__name__} ({name}): recurrent layers cannot be expressed, privinfer "
                f"runs feed-forward chains; supported: {', '.join(SUPPORTED_MODULES)}")
        raise _unsupported(f"{type(m).__name__} ({name})")


def _trace_chain(model: nn.Module, b: _Builder) -> None:
    class _Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (PolyAct, Square)) or super().is_leaf_module(m, qualname)

    _name_unsupported_modules(model)  # an LSTM must be named, not the getitem/loop that follows it
    try:
        graph = _Tracer().trace(model)
    except Exception as e:  # fx raises many kinds; the message names the construct
        raise UnsupportedLayerError(f"cannot trace {type(model).__name__} with torch.fx ({e}); "
                                    f"use nn.Sequential or a traceable forward. Supported: "
                                    f"{', '.join(SUPPORTED_MODULES)}") from None
    modules = dict(model.named_modules())
    current = None
    for node in graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise _unsupported("a model with more than one input")
            current = node
            continue
        if node.op == "output":
            if node.args[0] is not current:
                raise _unsupported("a model whose output is not the last layer")
            continue
        if node.op == "get_attr":
            raise _unsupported(f"direct parameter use {node.target}")
        if node.op == "call_method" and node.target == "size":
            continue
        inputs = [n for n in node.all_input_nodes if not (n.op == "call_method" and n.target == "size")]
        if not node.args or node.args[0] is not current or any(n is not current for n in inputs):
            raise _unsupported(f"a branching graph at {node.name} (only chains are supported)")
        if node.op == "call_module":
            b.module(modules[node.target], node.target)
        elif node.op == "call_function":
            b.function(node.target, node.args, node.kwargs, node.name)
        elif node.op == "call_method":
            b.method(node.target, node.args, node.kwargs, node.name)
        current = node


def compile_model(model: Any, input_shape: Sequence[int] | None = None,
                  input_range: Sequence[float] | None = None) -> Graph:
    """Turn a torch module (eval-mode semantics) or an existing Graph into a Graph.

    `input_shape` excludes the batch dimension; when omitted it is read from `model.input_shape`
    (zoo models carry it) or, for a model starting with Linear, from its in_features.
    `input_range` (lo, hi) is the range of input values the model was trained for (e.g. (0, 1) for pixels
    divided by 255); it is published to clients, which refuse inputs outside it, and lets `he` and `ss`
    size their arithmetic so that it cannot wrap. When omitted it is read from `model.input_range`.
    """
    if isinstance(model, Graph):
        if input_shape is not None and tuple(int(v) for v in input_shape) != model.input_shape:
            raise ShapeError(f"input_shape {tuple(input_shape)} does not match the graph's {model.input_shape}")
        return model if input_range is None else model.with_input_range(input_range)
    if not isinstance(model, nn.Module):
        raise UnsupportedLayerError(f"cannot compile {type(model).__name__}: expected a torch nn.Module")
    b = _Builder()
    with torch.no_grad():
        if isinstance(model, nn.Sequential):
            b.module(model, "")
        else:
            _trace_chain(model, b)
    if b.pending_pad is not None:
        raise _unsupported("ZeroPad2d at the end of the model")
    if not b.layers:
        raise UnsupportedLayerError("the model has no layers")
    if input_shape is None:
        input_shape = getattr(model, "input_shape", None)
    if input_shape is None:
        if isinstance(b.layers[0], Linear):
            input_shape = (b.layers[0].weight.shape[1],)
        else:
            raise ShapeError("input_shape is required (C, H, W) for a model that starts with a convolution: "
                             "pass input_shape=(1, 28, 28) to compile_model / PrivateSession / serve, "
                             "or set model.input_shape = (1, 28, 28)")
    if input_range is None:
        input_range = getattr(model, "input_range", None)
    return _resolve_adaptive(tuple(int(v) for v in input_shape), b.layers, b.names, input_range)


def _resolve_adaptive(input_shape, layers, names, input_range=None) -> Graph:
    shape = input_shape
    out = []
    for layer, name in zip(layers, names):
        if isinstance(layer, _AdaptivePending):
            if len(shape) != 3 or shape[1] % layer.output_size[0] or shape[2] % layer.output_size[1]:
                raise _unsupported(f"AdaptiveAvgPool2d{layer.output_size} on {shape} ({name}): not evenly dividing")
            k = (shape[1] // layer.output_size[0], shape[2] // layer.output_size[1])
            layer = AvgPool2d(k, k)
        out.append(layer)
        try:
            shape = layer.out_shape(shape)
        except ShapeError as e:
            raise ShapeError(f"layer {name}: {e}") from None
    return Graph(input_shape, tuple(out), tuple(names), input_range)
