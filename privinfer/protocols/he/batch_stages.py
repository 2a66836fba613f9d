"""Normalized stages of the CryptoNets batch engine: the graph as linear maps and polynomials, their value
bounds, and their integer (RNS-ready) linear operators.

Why a module of its own: `batch_plan.py` chooses scales and levels by a MILP over these stages; keeping the
stage algebra apart keeps each module readable (the two were one 550-line module).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...errors import ParameterError, UnsupportedLayerError
from ...model.ir import AvgPool2d, Conv2d, Flatten, Graph, Linear, Poly
from .batch_rns import IntLinear

MIN_LIMB_BITS = 12  # narrowest limb the planner accepts for a layer's exact products
POLY_COEF_BITS = 24.0  # precision of a leading Poly coefficient that cannot be folded away

# ---------------------------------------------------------------------------------------------
# normalized stages
# ---------------------------------------------------------------------------------------------
@dataclass
class Stage:
    kind: str  # "conv" | "dense" | "pool" | "diag" | "poly"
    name: str
    in_shape: tuple
    out_shape: tuple
    weight: np.ndarray | None = None  # conv (M,C,kh,kw), dense (out,in), diag () scalar
    bias: np.ndarray | None = None  # per output unit (n_out,)
    stride: tuple = (1, 1)
    padding: tuple = (0, 0, 0, 0)
    pool: tuple | None = None  # (kh, kw, sh, sw, ph, pw)
    coeffs: tuple = ()  # poly, low degree first
    bound: float = 0.0  # bound on |output|

    @property
    def n_in(self) -> int:
        return int(np.prod(self.in_shape))

    @property
    def n_out(self) -> int:
        return int(np.prod(self.out_shape))

    @property
    def weighted(self) -> bool:
        return self.kind in ("conv", "dense", "diag")

    @property
    def degree(self) -> int:
        return len(self.coeffs) - 1

    def maxw(self) -> float:
        m = float(np.max(np.abs(self.weight))) if self.weight is not None else 1.0
        return m if m > 0 else 1.0  # all-zero weights: any rho is exact

    def row_l1(self) -> float:
        """max over outputs of sum |w| (for rho = 1)."""
        if self.kind == "dense":
            return float(np.abs(self.weight).sum(axis=1).max())
        if self.kind == "conv":
            return float(np.abs(self.weight).reshape(self.weight.shape[0], -1).sum(axis=1).max())
        if self.kind == "diag":
            return abs(float(self.weight))
        if self.kind == "pool":
            return float(self.pool[0] * self.pool[1])
        return 1.0


def _linear_part(st: Stage, x: np.ndarray) -> np.ndarray:
    """Apply a linear stage without its bias to a batch of flat vectors (B, n_in) in float64."""
    import torch
    import torch.nn.functional as F
    if st.kind == "dense":
        return x @ st.weight.T
    if st.kind == "diag":
        return x * float(st.weight)
    t = torch.from_numpy(x.reshape((-1,) + tuple(st.in_shape)))
    if st.kind == "conv":
        pt, pb, pl, pr = st.padding
        t = F.conv2d(F.pad(t, (pl, pr, pt, pb)), torch.from_numpy(st.weight), stride=st.stride)
    else:
        kh, kw, sh, sw, ph, pw = st.pool
        t = F.avg_pool2d(t, (kh, kw), (sh, sw), (ph, pw), count_include_pad=True)
    return t.reshape(t.shape[0], -1).numpy()


def normalize(graph: Graph) -> list[Stage]:
    """The graph as a list of stages, with affine Polys and leading Poly coefficients folded away."""
    stages: list[Stage] = []
    for i, (layer, name) in enumerate(zip(graph.layers, graph.names)):
        s_in, s_out = graph.shapes[i], graph.shapes[i + 1]
        if isinstance(layer, Conv2d):
            b = np.repeat(layer.bias, int(np.prod(s_out[1:])))
            stages.append(Stage("conv", name, s_in, s_out, layer.weight.copy(), b, layer.stride, layer.padding))
        elif isinstance(layer, Linear):
            stages.append(Stage("dense", name, s_in, s_out, layer.weight.copy(), layer.bias.copy()))
        elif isinstance(layer, AvgPool2d):
            stages.append(Stage("pool", name, s_in, s_out,
                                pool=(*layer.kernel, *layer.stride, *layer.padding)))
        elif isinstance(layer, Flatten):
            if stages:
                stages[-1].out_shape = s_out  # flattening is a no-op on our unit order
            else:
                pass  # leading flatten: nothing to do, units are already in C*H*W order
        elif isinstance(layer, Poly):
            stages.append(Stage("poly", name, s_in, s_out, coeffs=tuple(layer.coeffs)))
        else:
            raise UnsupportedLayerError(
                f"the HE batch engine cannot evaluate layer {name!r} ({layer.kind}); it supports conv2d, "
                f"linear, avgpool2d, flatten and poly (ReLU/MaxPool need a polynomial replacement)")
    # fold affine polys (degree <= 1) into the preceding weighted layer, else keep them as a diagonal map
    out: list[Stage] = []
    for st in stages:
        if st.kind == "poly" and st.degree <= 1:
            c0 = st.coeffs[0]
            c1 = st.coeffs[1] if st.degree == 1 else 0.0
            prev = out[-1] if out else None
            if prev is not None and prev.kind in ("conv", "dense", "diag"):
                prev.weight = prev.weight * c1
                prev.bias = prev.bias * c1 + c0
                prev.name += "+" + st.name
                prev.out_shape = st.out_shape
                continue
            if c1 == 0.0:
                raise UnsupportedLayerError(f"layer {st.name!r}: a constant polynomial has nothing to compute")
            out.append(Stage("diag", st.name, st.in_shape, st.out_shape, np.float64(c1),
                             np.full(st.n_out, float(c0))))
            continue
        out.append(st)
    # make leading poly coefficients 1 by moving them into the next weighted layer (through pooling)
    for i, st in enumerate(out):
        if st.kind != "poly" or st.coeffs[-1] == 1.0:
            continue
        j = i + 1
        while j < len(out) and out[j].kind == "pool":
            j += 1
        if j < len(out) and out[j].kind in ("conv", "dense", "diag"):
            cd = st.coeffs[-1]
            st.coeffs = tuple(c / cd for c in st.coeffs[:-1]) + (1.0,)
            out[j].weight = out[j].weight * cd
    if not out:
        raise UnsupportedLayerError("the graph has no layer the HE batch engine can evaluate")
    return out


def set_bounds(stages: list[Stage], input_bound: float, calib: np.ndarray | None = None,
               safety: float = 4.0) -> None:
    """Interval bounds on |values| after each stage (or calibrated maxima times `safety`)."""
    if calib is not None:
        x = calib.reshape(calib.shape[0], -1).astype(np.float64)
        for st in stages:
            x = stage_forward(st, x)
            st.bound = max(float(np.max(np.abs(x))) * safety, 1e-3)
        return
    b = float(input_bound)
    for st in stages:
        if st.kind == "poly":
            b = sum(abs(c) * b ** k for k, c in enumerate(st.coeffs))
        elif st.kind == "pool":
            pass
        else:
            b = st.row_l1() * b + float(np.max(np.abs(st.bias))) if st.bias is not None else st.row_l1() * b
        st.bound = max(b, 1e-3)


def stage_forward(st: Stage, x: np.ndarray) -> np.ndarray:
    """Plaintext float64 evaluation of one stage on (B, n_in)."""
    if st.kind == "poly":
        out = np.full_like(x, st.coeffs[-1])
        for c in reversed(st.coeffs[:-1]):
            out = out * x + c
        return out
    y = _linear_part(st, x)
    if st.bias is not None:
        y = y + st.bias
    return y


# ---------------------------------------------------------------------------------------------
# integer operators
# ---------------------------------------------------------------------------------------------
def conv_blocks(W: np.ndarray, stride, padding, in_shape, target_rows: int = 8):
    """Blocks (out_rows, in_sel, Wb) of a conv as a block-sparse matrix: one block per output row and
    group of output columns; returns (blocks, perm) with perm[k] = true output index of block row k."""
    M, C, kh, kw = W.shape
    _, H, Wd = in_shape
    sh, sw = stride
    pt, pb, pl, pr = padding
    OH = (H + pt + pb - kh) // sh + 1
    OW = (Wd + pl + pr - kw) // sw + 1
    gw = min(OW, max(1, -(-target_rows // M)))
    blocks, perm, row = [], [], 0
    for oy in range(OH):
        iy0 = oy * sh - pt
        rows = [iy for iy in range(iy0, iy0 + kh) if 0 <= iy < H]
        for x0 in range(0, OW, gw):
            x1 = min(OW, x0 + gw)
            g = x1 - x0
            ix_lo = max(0, x0 * sw - pl)
            ix_hi = min(Wd, (x1 - 1) * sw - pl + kw)
            nx = ix_hi - ix_lo
            if not rows or nx <= 0:  # window entirely in the padding: output is the bias alone
                Wb = np.zeros((M * g, 1))
                in_sel = slice(0, 1)
            else:
                cidx = np.arange(C)[:, None, None]
                ridx = np.array(rows)[None, :, None]
                xidx = np.arange(ix_lo, ix_hi)[None, None, :]
                in_idx = (cidx * H * Wd + ridx * Wd + xidx).reshape(-1)
                Wb = np.zeros((M, g, C, len(rows), nx))
                for r, iy in enumerate(rows):
                    ky = iy - iy0
                    for ol in range(g):
                        xs = (x0 + ol) * sw - pl
                        for kx in range(kw):
                            ix = xs + kx
                            if ix_lo <= ix < ix_hi:
                                Wb[:, ol, :, r, ix - ix_lo] = W[:, :, ky, kx]
                Wb = Wb.reshape(M * g, -1)
                if np.all(np.diff(in_idx) == 1):
                    in_sel = slice(int(in_idx[0]), int(in_idx[-1]) + 1)
                else:
                    in_sel = in_idx
            blocks.append((slice(row, row + M * g), in_sel, Wb))
            perm.extend((m * OH * OW + oy * OW + ox) for m in range(M) for ox in range(x0, x1))
            row += M * g
    return blocks, np.array(perm, dtype=np.int64)


def build_int_linear(st: Stage, rho: float, out_scale: float, primes_max: int, target_rows: int = 8) -> IntLinear:
    """The integer operator of a linear stage for weight factor rho and output scale."""
    bias = None
    if st.bias is not None and np.any(st.bias != 0):
        bias = np.array([int(round(float(v) * out_scale)) for v in st.bias], dtype=object)
    if st.kind == "pool":
        kh, kw, sh, sw, ph, pw = st.pool
        C, H, W = st.in_shape
        OH = (H + 2 * ph - kh) // sh + 1
        OW = (W + 2 * pw - kw) // sw + 1
        if kh * kw * primes_max < 2 ** 64:
            return IntLinear(st.n_in, st.n_out, [], np.arange(st.n_out), float(kh * kw), None,
                             pool=(C, H, W, kh, kw, sh, sw, ph, pw, OH, OW))
        Wc = np.zeros((C, C, kh, kw))
        for c in range(C):
            Wc[c, c] = 1.0
        blocks, perm = conv_blocks(Wc, (sh, sw), (ph, ph, pw, pw), st.in_shape, target_rows)
        return IntLinear(st.n_in, st.n_out, blocks, perm, float(kh * kw), None)
    if st.kind == "dense":
        Wi = np.round(st.weight * rho)
        blocks = [(slice(0, st.n_out), slice(0, st.n_in), Wi)]
        l1 = float(np.abs(Wi).sum(axis=1).max())
        return IntLinear(st.n_in, st.n_out, blocks, np.arange(st.n_out), l1, bias)
    if st.kind == "diag":
        w = float(np.round(float(st.weight) * rho))
        n = st.n_in
        blocks = []
        for a in range(0, n, 64):
            b = min(n, a + 64)
            blocks.append((slice(a, b), slice(a, b), np.eye(b - a) * w))
        return IntLinear(n, n, blocks, np.arange(n), abs(w), bias)
    if st.kind == "conv":
        Wi = np.round(st.weight * rho)
        blocks, perm = conv_blocks(Wi, st.stride, st.padding, st.in_shape, target_rows)
        l1 = float(max(np.abs(b[2]).sum(axis=1).max() for b in blocks))
        return IntLinear(st.n_in, st.n_out, blocks, perm, max(l1, 1.0), bias)
    raise ParameterError(f"stage {st.name} is not linear")
