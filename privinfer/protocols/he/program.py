"""From an IR graph to an HE program: affine segments separated by square / cube activations.

Every run of linear layers (Conv2d, AvgPool2d, Flatten, Linear, and degree <= 1 polynomials) between two
non-linear activations is one affine map `y = A x + b` on flat vectors, composed into a dense matrix. That is
how AvgPool and Flatten "fold into the next linear map": they cost nothing under HE.

Polynomial activations are rewritten so that each costs as little multiplicative depth as possible:

* degree 2: `a x² + c1 x + c0 = a (x + h)² + k` with `h = c1 / 2a`: `h` folds into the previous segment's bias,
  `a` and `k` into the next segment's weights and bias, so the ciphertext only squares (no rescale of its own);
* degree 3: the depressed cubic `c3 u³ + e u + k` with `u = x + h`, `h = c2 / 3 c3`: evaluated as
  `u · (u² + e / c3)` (one rescale), `c3` and `k` fold into the next segment;
* degree >= 4 is refused (no rewrite to depth 1-2); ReLU / MaxPool are refused with a pointer to
  `privinfer.model.approx.make_he_friendly`.

Every segment also carries its *structural* sparsity pattern, computed from the public architecture only
(weights replaced by ones, so no cancellation): the packing (which slot holds what) is derived from the pattern,
never from weight values, so client and server derive identical layouts from the public graph.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import sparse

from ...errors import ParameterError, ShapeError, UnsupportedLayerError
from ...model.ir import AvgPool2d, Conv2d, Flatten, Graph, Linear, Poly
from ...model.reference import apply_layer

#: largest dense segment matrix we are willing to build (entries)
MAX_SEGMENT_ENTRIES = 1 << 26
HE_FRIENDLY_HINT = ("HE evaluates only polynomial activations; convert the model with "
                    "privinfer.model.approx.make_he_friendly(model) (ReLU -> polynomial, MaxPool -> AvgPool)")


@dataclass
class Affine:
    """y = A x + b on flat vectors; `pattern` is the structural (public) non-zero pattern of A."""
    A: np.ndarray
    b: np.ndarray
    pattern: np.ndarray
    names: tuple = ()
    #: public geometry for the channel packing (`convpack`): the segment's input / output tensor shapes and
    #: its leading AvgPool (kernel, stride, padding) if it starts with one
    in_shape: tuple = ()
    out_shape: tuple = ()
    lead_pool: tuple | None = None
    convs: tuple = ()  # (kernel, stride, padding) of each Conv2d in the segment
    kind = "affine"

    @property
    def n_in(self) -> int:
        return int(self.A.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.A.shape[0])


@dataclass
class Activation:
    """`square`: x -> x²; `cube`: u -> u · (u² + const). Scalars around them are folded into the segments."""
    kind: str
    const: float = 0.0
    name: str = ""


@dataclass
class Program:
    ops: list = field(default_factory=list)
    input_dim: int = 0
    output_dim: int = 0
    #: the `he` server's `conv_packing` option ("auto", "on", "off"): public, sent in WELCOME
    conv_packing: str = "auto"

    @property
    def segments(self) -> list[Affine]:
        return [o for o in self.ops if isinstance(o, Affine)]

    def structure(self) -> list[str]:
        """['lin', 'sq', 'lin', 'cube', 'lin', ...]: what the parameter selection needs."""
        return ["lin" if isinstance(o, Affine) else ("sq" if o.kind == "square" else "cube") for o in self.ops]

    def max_dim(self) -> int:
        return max(max(s.n_out, s.n_in) for s in self.segments)

    def run(self, x: np.ndarray) -> np.ndarray:
        """Plaintext evaluation of the rewritten program (must equal the reference executor)."""
        v = np.asarray(x, dtype=np.float64).reshape(-1)
        for op in self.ops:
            if isinstance(op, Affine):
                v = op.A @ v + op.b
            elif op.kind == "square":
                v = v * v
            else:
                v = v * (v * v + op.const)
        return v


def check_he_graph(graph: Graph) -> None:
    """Refuse layers HE cannot evaluate, naming them (typed error, no computation)."""
    for layer, name in zip(graph.layers, graph.names):
        if layer.kind in ("relu", "maxpool2d"):
            raise UnsupportedLayerError(f"layer {name} ({layer.kind}) cannot run under HE. {HE_FRIENDLY_HINT}")
        if layer.kind == "poly" and layer.degree > 3:
            raise UnsupportedLayerError(f"layer {name}: polynomial of degree {layer.degree} > 3 is not supported "
                                        f"by the HE evaluator (use degree 2 or 3: make_he_friendly(activation="
                                        f"'poly2'|'poly3'))")
        if layer.kind not in ("conv2d", "linear", "avgpool2d", "flatten", "poly"):
            raise UnsupportedLayerError(f"layer {name} ({layer.kind}) cannot run under HE. {HE_FRIENDLY_HINT}")


def _apply_cols(layer, M: np.ndarray, shape, bias: bool) -> np.ndarray:
    """Apply a linear layer to every column of M (columns are flat vectors of `shape`)."""
    if isinstance(layer, (Flatten,)):
        return M
    if isinstance(layer, Linear):
        out = layer.weight @ M
        return out + layer.bias[:, None] if bias else out
    t = torch.from_numpy(np.ascontiguousarray(M.T).reshape((M.shape[1],) + tuple(shape)))
    with torch.no_grad():
        if isinstance(layer, Conv2d) and not bias:
            layer = Conv2d(layer.weight, np.zeros_like(layer.bias), layer.stride, layer.padding)
        out = apply_layer(layer, t)
    return out.reshape(M.shape[1], -1).numpy().T.copy()


def _spatial(H, W, Ho, Wo, kernel, stride, pad_top, pad_left):
    """(Ho*Wo, H*W) 0/1 pattern of a sliding window (kernel, stride, zero padding): which inputs each output reads."""
    (kh, kw), (sy, sx) = kernel, stride
    y, x, ky, kx = np.meshgrid(np.arange(Ho), np.arange(Wo), np.arange(kh), np.arange(kw), indexing="ij")
    iy, ix = y * sy + ky - pad_top, x * sx + kx - pad_left
    ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    rows, cols = (y * Wo + x)[ok], (iy * W + ix)[ok]
    return sparse.csr_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(Ho * Wo, H * W))


def _layer_pattern(layer, shape, out_shape):
    """The structural 0/1 pattern of one linear layer as a sparse (n_out, n_in) matrix: what the layer reads,
    weights replaced by ones (the public architecture only; no cancellation)."""
    n_in, n_out = int(np.prod(shape)), int(np.prod(out_shape))
    if isinstance(layer, Flatten):
        return sparse.identity(n_in, dtype=np.int8, format="csr")
    if isinstance(layer, Linear):
        return sparse.csr_matrix(np.ones((n_out, n_in), dtype=np.int8))
    (C, H, W), (Co, Ho, Wo) = shape, out_shape
    if isinstance(layer, Conv2d):
        t, _, le, _ = layer.padding
        S = _spatial(H, W, Ho, Wo, layer.kernel, layer.stride, t, le)
        return sparse.kron(np.ones((Co, C), dtype=np.int8), S, format="csr")
    S = _spatial(H, W, Ho, Wo, layer.kernel, layer.stride, layer.padding[0], layer.padding[1])  # AvgPool2d
    return sparse.kron(sparse.identity(C, dtype=np.int8), S, format="csr")


def _pattern(chain: list, shapes: list) -> np.ndarray:
    """The structural pattern of a chain of linear layers [(layer, input shape)], by sparse boolean products:
    the same matrix as composing the all-ones layers (every entry a sum of positive products), without the
    dense composition (the client builds patterns only: seconds -> milliseconds)."""
    M = None
    for (layer, sh), out in zip(chain, shapes):
        L = _layer_pattern(layer, sh, out).astype(np.int32)
        M = L if M is None else L @ M
        M.data[:] = 1
    return M.toarray() > 0


def _no_bias(layer):
    if isinstance(layer, Conv2d):
        return Conv2d(layer.weight, np.zeros_like(layer.bias), layer.stride, layer.padding)
    if isinstance(layer, Linear):
        return Linear(layer.weight, np.zeros_like(layer.bias))
    return layer


def _compose(chain: list, n_in: int, n_out: int) -> np.ndarray:
    """The (n_out, n_in) matrix of a chain of bias-free linear layers [(layer, input shape)]: applied to the
    n_in unit vectors, or (when the output is smaller) as n_out vector-Jacobian products: the cost of a
    segment is then min(n_in, n_out) passes, not n_in (a pool + conv after a wide convolution)."""
    if n_in <= n_out or not chain:
        M = np.eye(n_in)
        for layer, sh in chain:
            M = _apply_cols(layer, M, sh, bias=False)
        return M
    x = torch.zeros((n_out,) + tuple(chain[0][1]), dtype=torch.float64, requires_grad=True)
    t = x
    for layer, _ in chain:
        t = apply_layer(_no_bias(layer), t)
    # row R of A = gradient of output R: one batched backward pass, sample R seeded with unit vector R
    (rows,) = torch.autograd.grad(t.reshape(n_out, -1), x, torch.eye(n_out, dtype=torch.float64))
    return rows.reshape(n_out, n_in).numpy().copy()


def build_program(graph: Graph, structure_only: bool = False) -> Program:
    """Rewrite `graph` into affine segments and square/cube activations (see the module docstring).
    `structure_only` (the client, which holds no weights): patterns and shapes only; every `A` is a read-only
    zero view (no composition cost)."""
    check_he_graph(graph)
    n_in = int(np.prod(graph.input_shape))
    prog = Program(input_dim=n_in, output_dim=int(np.prod(graph.output_shape)))
    b = np.zeros(n_in)
    chain: list = []          # the segment's linear layers, composed lazily (see `_compose`)
    mult, structural = 1.0, True  # scalar factor (activation scales, degree-1 polys); False: c1 == 0 somewhere
    names: list[str] = []
    shape = tuple(graph.input_shape)
    seg_in, lead, convs = [shape], [None], []

    def close(next_scale: float, next_shift: float):
        nonlocal b, chain, mult, structural, names
        n_i, n_o = int(np.prod(seg_in[0])), int(np.prod(shape))
        if n_i * n_o > MAX_SEGMENT_ENTRIES:
            raise ParameterError(f"segment {names} is a {n_o}x{n_i} map, too large for the latency "
                                 f"packing (limit {MAX_SEGMENT_ENTRIES} entries)")
        A = np.broadcast_to(0.0, (n_o, n_i)) if structure_only else _compose(chain, n_i, n_o) * mult
        if not structural:
            P = np.zeros((n_o, n_i), dtype=bool)
        elif chain:
            P = _pattern(chain, [sh for _, sh in chain[1:]] + [tuple(shape)])
        else:
            P = np.eye(n_o, n_i, dtype=bool)
        prog.ops.append(Affine(A, b, P, tuple(names), seg_in[0], tuple(shape), lead[0], tuple(convs)))
        convs.clear()
        b, chain, mult, structural, names = np.full(n_o, float(next_shift)), [], float(next_scale), True, []
        seg_in[0], lead[0] = tuple(shape), None

    for layer, name, out_shape in zip(graph.layers, graph.names, graph.shapes[1:]):
        if isinstance(layer, (Conv2d, Linear, AvgPool2d, Flatten)):
            if int(np.prod(seg_in[0])) * int(np.prod(out_shape)) > MAX_SEGMENT_ENTRIES:
                raise ParameterError(f"layer {name}: composed linear map {int(np.prod(out_shape))}x"
                                     f"{int(np.prod(seg_in[0]))} is too large for the latency packing")
            chain.append((layer, shape))
            b = _apply_cols(layer, b[:, None], shape, bias=True)[:, 0]
            if isinstance(layer, Conv2d):
                convs.append((layer.kernel, layer.stride, layer.padding))
            if not names and isinstance(layer, AvgPool2d):
                lead[0] = (layer.kernel, layer.stride, layer.padding)
            names.append(name)
        elif isinstance(layer, Poly):
            c = list(layer.coeffs) + [0.0] * (4 - len(layer.coeffs))
            deg = layer.degree
            if deg <= 1:
                mult, b = mult * c[1], b * c[1] + c[0]
                if c[1] == 0.0:
                    structural = False
                names.append(name)
            elif deg == 2:
                a, h = c[2], c[1] / (2 * c[2])
                k = c[0] - c[1] * c[1] / (4 * c[2])
                b = b + h
                close(a, k)
                prog.ops.append(Activation("square", 0.0, name))
            else:  # deg == 3: p(x) = c3 u^3 + e u + k with u = x + h
                c3 = c[3]
                h = c[2] / (3 * c3)
                x0 = -h
                e = 3 * c3 * x0 * x0 + 2 * c[2] * x0 + c[1]
                k = ((c3 * x0 + c[2]) * x0 + c[1]) * x0 + c[0]
                b = b + h
                close(c3, k)
                prog.ops.append(Activation("cube", e / c3, name))
        else:  # pragma: no cover - check_he_graph refused it
            raise UnsupportedLayerError(f"layer {name} ({layer.kind}): {HE_FRIENDLY_HINT}")
        shape = tuple(out_shape)
    close(1.0, 0.0)
    if prog.segments[-1].n_out != prog.output_dim:  # pragma: no cover - shapes are checked by Graph
        raise ShapeError(f"program output {prog.segments[-1].n_out} != graph output {prog.output_dim}")
    return prog
