"""The IR <-> torch bridge: polynomial activations as torch modules, a Graph as a trainable torch chain and
back, and the thread setting for training the small networks here.

Why one module: the zoo, `make_he_friendly`, the noisy protocol's noise-aware training and the inversion
attack all turn Graphs into torch modules and back; they share this one table of layer kinds.
"""
from __future__ import annotations

import contextlib
import os

import torch
from torch import nn


class PolyAct(nn.Module):
    """Elementwise polynomial sum_i c_i x^i (low degree first); compiles to ir.Poly."""

    def __init__(self, coeffs):
        super().__init__()
        self.register_buffer("coeffs", torch.as_tensor([float(c) for c in coeffs], dtype=torch.float32))

    def forward(self, x):
        out = torch.zeros_like(x) + self.coeffs[-1]
        for c in reversed(self.coeffs[:-1].tolist()):  # Horner
            out = out * x + c
        return out

    def extra_repr(self) -> str:
        return "coeffs=" + ", ".join(f"{c:.4g}" for c in self.coeffs.tolist())


class Square(nn.Module):
    """x², CryptoNets' activation; compiles to ir.Poly((0, 0, 1))."""

    def forward(self, x):
        return x * x


def sequential_from_graph(graph) -> nn.Sequential:
    """A trainable float32 `nn.Sequential` computing `graph` (BatchNorm already folded by the compiler).

    It lets `make_he_friendly` rewrite and fine-tune any compilable model, including class models whose
    `forward` uses functional calls (F.relu, F.max_pool2d) or BatchNorm, as a plain chain of modules.
    """
    from .ir import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Poly, ReLU
    mods = []
    for layer in graph.layers:
        if isinstance(layer, Conv2d):
            t, b, l, r = layer.padding
            if (t, l) != (b, r):
                mods.append(nn.ZeroPad2d((l, r, t, b)))
                t = l = 0
            oc, ic, kh, kw = layer.weight.shape
            m = nn.Conv2d(ic, oc, (kh, kw), stride=layer.stride, padding=(t, l))
            m.weight.data = torch.from_numpy(layer.weight).float().clone()
            m.bias.data = torch.from_numpy(layer.bias).float().clone()
        elif isinstance(layer, Linear):
            m = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            m.weight.data = torch.from_numpy(layer.weight).float().clone()
            m.bias.data = torch.from_numpy(layer.bias).float().clone()
        elif isinstance(layer, AvgPool2d):
            m = nn.AvgPool2d(layer.kernel, layer.stride, layer.padding)
        elif isinstance(layer, MaxPool2d):
            m = nn.MaxPool2d(layer.kernel, layer.stride)
        elif isinstance(layer, ReLU):
            m = nn.ReLU()
        elif isinstance(layer, Poly):
            m = Square() if layer.coeffs == (0.0, 0.0, 1.0) else PolyAct(layer.coeffs)
        elif isinstance(layer, Flatten):
            m = nn.Flatten()
        else:
            raise TypeError(f"no torch module for {type(layer).__name__}")
        mods.append(m)
    seq = nn.Sequential(*mods)
    seq.input_shape = tuple(graph.input_shape)
    if graph.input_range is not None:
        seq.input_range = tuple(graph.input_range)
    return seq.eval()


def graph_from_sequential(module: nn.Module, input_shape, names):
    """Compile `module` (one IR layer per name) back into a Graph carrying the given layer names."""
    from ..errors import PrivinferError
    from .compile import compile_model
    from .ir import Graph
    g = compile_model(module, tuple(input_shape))
    if len(g.layers) != len(names):
        raise PrivinferError(f"compiled {len(g.layers)} layers, expected {len(names)}")
    return Graph(g.input_shape, g.layers, tuple(names), g.input_range)


@contextlib.contextmanager
def torch_threads(n: int | None = None):
    """Train small models with `n` intra-op threads (default `$PRIVINFER_TRAIN_THREADS` or 1).

    The networks trained here are tiny; on a loaded machine torch's thread pool spends far longer
    synchronizing than computing (measured: 2 ms per step with 1 thread, 150 ms with 2 on a busy 2-core box).
    """
    n = int(n or os.environ.get("PRIVINFER_TRAIN_THREADS") or 1)
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
