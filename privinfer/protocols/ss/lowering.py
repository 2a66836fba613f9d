"""Privinfer's IR as CrypTen tensor operations, for the `ss` protocol.

`lower` and `Executor` compile privinfer's IR to CrypTen tensor operations (conv2d with explicit
asymmetric padding, matmul, avg pool, tournament max pool, ReLU, polynomials, flatten), rewriting
ReLU→MaxPool into MaxPool→ReLU (they commute), which cuts the comparisons 4x for 2x2 pools.
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import ShapeError, UnsupportedLayerError
from ...model.ir import AvgPool2d, Conv2d, Flatten, Graph, Linear, MaxPool2d, Poly, ReLU


# --- IR lowering --------------------------------------------------------------------------------
SUPPORTED = ("conv2d", "linear", "avgpool2d", "maxpool2d", "relu", "poly", "flatten")


def lower(graph: Graph) -> list:
    """The layer list the 2PC executor runs: ReLU→MaxPool rewritten to MaxPool→ReLU (exact)."""
    layers = list(graph.layers)
    for l in layers:
        if l.kind not in SUPPORTED:
            raise UnsupportedLayerError(f"ss cannot run layer kind {l.kind!r}")
    changed = True
    while changed:
        changed = False
        for i in range(len(layers) - 1):
            if isinstance(layers[i], ReLU) and isinstance(layers[i + 1], MaxPool2d):
                layers[i], layers[i + 1] = layers[i + 1], layers[i]
                changed = True
    return layers


def _fixed(a: np.ndarray, bits: int) -> torch.Tensor:
    """float64 tensor rounded to the fixed-point grid (CrypTen's encoder truncates towards zero)."""
    scale = float(1 << bits)
    return torch.from_numpy(np.round(np.asarray(a, dtype=np.float64) * scale) / scale)


class Executor:
    """The model as CrypTen operations; weights secret-shared by party 0 (zeros elsewhere)."""

    def __init__(self, crypten, graph: Graph, rank: int, bits: int):
        self.crypten = crypten
        self.graph = graph
        self.layers = lower(graph)
        self.bits = bits
        self.rank = rank
        self.weights = []
        share = lambda a: crypten.cryptensor(_fixed(a, bits) if rank == 0 else torch.zeros(a.shape, dtype=torch.float64),  # noqa: E731
                                             src=0)
        for l in self.layers:
            if isinstance(l, Conv2d):
                self.weights.append((share(l.weight), share(l.bias.reshape(1, -1, 1, 1))))
            elif isinstance(l, Linear):
                self.weights.append((share(np.ascontiguousarray(l.weight.T)), share(l.bias.reshape(1, -1))))
            else:
                self.weights.append(None)

    def share_input(self, x: np.ndarray | None, batch: int):
        shape = (batch, *self.graph.input_shape)
        t = _fixed(x, self.bits) if self.rank == 1 else torch.zeros(shape, dtype=torch.float64)
        if tuple(t.shape) != shape:
            raise ShapeError(f"input shape {tuple(t.shape)} != {shape}")
        return self.crypten.cryptensor(t, src=1)

    def forward(self, h):
        for l, w in zip(self.layers, self.weights):
            h = self._layer(l, w, h)
        return h

    @staticmethod
    def reveal_to_client(h) -> torch.Tensor | None:
        """Open `h` to party 1 only, decoded exactly in float64.

        CrypTen's `get_plain_text` decodes negative values by dividing by 2^bits - 1 (off by one unit
        whenever the value lies just above an integer) and returns float32; we reveal the raw ring
        elements and divide by the scale ourselves.
        """
        raw = h._tensor.reveal(dst=1)
        return None if raw is None else raw.to(torch.float64) / float(h.encoder.scale)

    def _layer(self, l, w, h):
        if isinstance(l, Conv2d):
            t, b, lf, r = l.padding
            if t == b and lf == r:
                h = h.conv2d(w[0], stride=tuple(l.stride), padding=(t, lf))
            else:
                h = h.pad((lf, r, t, b)).conv2d(w[0], stride=tuple(l.stride))
            return h + w[1]
        if isinstance(l, Linear):
            return h.matmul(w[0]) + w[1]
        if isinstance(l, AvgPool2d):
            return h.avg_pool2d(tuple(l.kernel), stride=tuple(l.stride), padding=tuple(l.padding))
        if isinstance(l, MaxPool2d):
            return max_pool(h, l.kernel, l.stride)
        if isinstance(l, ReLU):
            return h.relu()
        if isinstance(l, Poly):
            return poly(h, l.coeffs)
        if isinstance(l, Flatten):
            return h.flatten(1)
        raise UnsupportedLayerError(f"ss cannot run {type(l).__name__}")


def _pairwise_max(x):
    """max over the last dimension by a tournament: ceil(log2 n) comparison rounds, n-1 comparisons."""
    while x.size(-1) > 1:
        n = x.size(-1)
        half = n // 2
        a, b = x[..., :half], x[..., half:2 * half]
        d = a - b
        m = b + d.relu()  # max(a, b) = b + relu(a - b): one comparison and one product per pair
        x = m if n % 2 == 0 else _cat_many([m, x[..., 2 * half:]])
    return x.squeeze(-1)


def max_pool(h, kernel, stride):
    """Max pooling without padding; windows gathered into the last dimension, then a tournament."""
    return _pairwise_max(pool_windows(h, kernel, stride))


def pool_windows(h, kernel, stride):
    """(B, C, oh, ow, kh * kw): every pooling window (no padding) along the last dimension."""
    kh, kw = kernel
    sh, sw = stride
    B, C, H, W = h.size()
    oh, ow = (H - kh) // sh + 1, (W - kw) // sw + 1
    if (kh, kw) == (sh, sw) and H % kh == 0 and W % kw == 0:
        x = h.view(B, C, oh, kh, ow, kw).permute(0, 1, 2, 4, 3, 5).reshape(B, C, oh, ow, kh * kw)
    else:
        parts = [h[:, :, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw].unsqueeze(-1)
                 for i in range(kh) for j in range(kw)]
        x = _cat_many(parts)
    return x


def _cat_many(parts):
    import crypten
    return crypten.cat(parts, dim=-1)


def poly(h, coeffs):
    c = [float(v) for v in coeffs]
    if len(c) == 1:
        return h * 0.0 + c[0]
    if len(c) == 2:
        return h * c[1] + c[0]
    if len(c) == 3:  # the square tuple is cheaper than a product
        sq = h.square()
        out = sq if c[2] == 1.0 else sq * c[2]
        if c[1] != 0.0:
            out = out + h * c[1]
        return out + c[0] if c[0] != 0.0 else out
    out = h * c[-1] + c[-2]  # Horner
    for ck in reversed(c[:-2]):
        out = out * h + ck
    return out
