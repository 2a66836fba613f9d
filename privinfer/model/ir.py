"""The layer IR's Graph: a chain of layers (`layers.py`, one dataclass per kind) that knows every shape, and
its file format.

Weights are float64 numpy arrays. The architecture (everything but the weights) is public in every
protocol, so each layer can describe itself as JSON (`spec`) and be rebuilt from it, with or without
weights. Graphs are saved as `.npz` files holding only numeric arrays and a JSON string: no pickle.
"""
from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Iterable, Sequence, Union

import numpy as np

from ..errors import ShapeError, UnsupportedLayerError
from .layers import (LAYER_KINDS, WEIGHTED_KINDS, AvgPool2d, Conv2d, Flatten, Layer, Linear,  # noqa: F401
                     MaxPool2d, Poly, ReLU, Shape, check_range)

MAX_GRAPH_BYTES = 1 << 30  # largest graph file (and largest parameter count x 8) accepted


@dataclass(frozen=True, eq=False)
class Graph:
    """A feed-forward chain of layers with its input shape (without batch) and every output shape."""
    input_shape: Shape
    layers: tuple
    names: tuple = field(default=())
    #: (lo, hi): the input values the model was trained/calibrated for, published to clients (None: unknown)
    input_range: tuple | None = None
    shapes: tuple = field(default=(), init=False)

    def __post_init__(self):
        object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        object.__setattr__(self, "input_range", check_range(self.input_range))
        object.__setattr__(self, "layers", tuple(self.layers))
        names = tuple(self.names) or tuple(f"{i}:{l.kind}" for i, l in enumerate(self.layers))
        if len(names) != len(self.layers):
            raise ShapeError("one name per layer is needed")
        object.__setattr__(self, "names", names)
        shapes = [self.input_shape]
        for i, layer in enumerate(self.layers):
            try:
                shapes.append(tuple(int(v) for v in layer.out_shape(shapes[-1])))
            except ShapeError as e:
                raise ShapeError(f"layer {names[i]}: {e}") from None
        object.__setattr__(self, "shapes", tuple(shapes))

    @property
    def output_shape(self) -> Shape:
        return self.shapes[-1]

    def __len__(self) -> int:
        return len(self.layers)

    def index(self, key: Union[int, str]) -> int:
        """Position of a layer given as an index (negative allowed, len allowed) or a name.

        A string of digits ("4", as a command line passes it) is an index too, like 4: one meaning, so
        `split=4` and `split="4"` cut at the same place (nn.Sequential's child names are digits that stop
        matching positions once BatchNorm is folded or Dropout dropped, so they are not looked up as names).
        """
        if isinstance(key, str) and key.strip().lstrip("-").isdigit():
            key = int(key)
        if isinstance(key, (int, np.integer)):
            k = int(key)
            if k < 0:
                k += len(self.layers)
            if not 0 <= k <= len(self.layers):
                raise ShapeError(f"layer index {key} outside 0..{len(self.layers)}")
            return k
        if key in self.names:
            return self.names.index(key)
        raise ShapeError(f"no layer named {key!r}; names are {list(self.names)}")

    def slice(self, start: int, stop: int | None = None) -> "Graph":
        """The sub-graph layers[start:stop], with its own input shape (and the input range if start is 0)."""
        stop = len(self.layers) if stop is None else stop
        return Graph(self.shapes[start], self.layers[start:stop], self.names[start:stop],
                     self.input_range if start == 0 else None)

    def replace(self, layers: Sequence, names: Sequence | None = None) -> "Graph":
        return Graph(self.input_shape, tuple(layers), tuple(names) if names is not None else (), self.input_range)

    def with_input_range(self, input_range) -> "Graph":
        """The same graph publishing `input_range` (lo, hi), or none."""
        return Graph(self.input_shape, self.layers, self.names, input_range)

    # --- the public architecture -------------------------------------------------------------
    def spec(self) -> dict:
        """The architecture as JSON-able data: kinds, hyper-parameters, shapes; no weights."""
        out = {"input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
               "layers": [{"kind": l.kind, "name": n, **l.params()} for l, n in zip(self.layers, self.names)]}
        if self.input_range is not None:
            out["input_range"] = list(self.input_range)
        return out

    @classmethod
    def from_spec(cls, spec: dict, arrays: dict[str, np.ndarray] | None = None) -> "Graph":
        """Rebuild a graph from `spec()`; weights come from `arrays` or are zeros (public-only copy)."""
        try:
            params = sum(int(np.prod(ls.get("kernel", [1, 1]), dtype=np.float64)) * int(ls.get("in_channels", 0))
                         * int(ls.get("out_channels", 0)) + int(ls.get("in_features", 0)) * int(ls.get("out_features", 0))
                         for ls in spec["layers"])
            if params * 8 > MAX_GRAPH_BYTES:  # a peer's spec must not make us allocate without bound
                raise ShapeError(f"graph spec declares {params} parameters (limit {MAX_GRAPH_BYTES // 8})")
            layers, names = [], []
            for i, ls in enumerate(spec["layers"]):
                kind = ls["kind"]
                names.append(str(ls.get("name", f"{i}:{kind}")))
                a = arrays or {}
                if kind == "conv2d":
                    shape = (ls["out_channels"], ls["in_channels"], *ls["kernel"])
                    layers.append(Conv2d(a.get(f"{i}.weight", np.zeros(shape)),
                                         a.get(f"{i}.bias", np.zeros(shape[0])),
                                         tuple(ls["stride"]), tuple(ls["padding"])))
                elif kind == "linear":
                    shape = (ls["out_features"], ls["in_features"])
                    layers.append(Linear(a.get(f"{i}.weight", np.zeros(shape)),
                                         a.get(f"{i}.bias", np.zeros(shape[0]))))
                elif kind == "avgpool2d":
                    layers.append(AvgPool2d(tuple(ls["kernel"]), tuple(ls["stride"]), tuple(ls["padding"])))
                elif kind == "maxpool2d":
                    layers.append(MaxPool2d(tuple(ls["kernel"]), tuple(ls["stride"])))
                elif kind == "poly":
                    layers.append(Poly(tuple(ls["coeffs"])))
                elif kind in ("relu", "flatten"):
                    layers.append(LAYER_KINDS[kind]())
                else:
                    raise UnsupportedLayerError(f"unknown layer kind {kind!r}; known: {sorted(LAYER_KINDS)}")
                if kind in WEIGHTED_KINDS and arrays is not None:
                    w = layers[-1].weight
                    if w.shape != tuple(shape):
                        raise ShapeError(f"layer {i} weight shape {w.shape} != {tuple(shape)}")
            return cls(tuple(spec["input_shape"]), tuple(layers), tuple(names), spec.get("input_range"))
        except (KeyError, TypeError, ValueError, ZeroDivisionError, OverflowError) as e:
            raise ShapeError(f"malformed graph spec: {e!r}") from None

    def arrays(self) -> dict[str, np.ndarray]:
        out = {}
        for i, l in enumerate(self.layers):
            for k, v in l.arrays().items():
                out[f"{i}.{k}"] = v
        return out

    def describe(self) -> str:
        rows = [f"input {self.input_shape}"]
        for n, l, s in zip(self.names, self.layers, self.shapes[1:]):
            p = ", ".join(f"{k}={v}" for k, v in l.params().items())
            rows.append(f"{n:<14} {l.kind:<10} {p:<60} -> {s}")
        return "\n".join(rows)


def save_graph(graph: Graph, path_or_file) -> None:
    """Write a graph as `.npz`: numeric arrays plus the spec as a UTF-8 byte array."""
    spec = np.frombuffer(json.dumps(graph.spec()).encode(), dtype=np.uint8)
    np.savez(path_or_file, __spec__=spec, **graph.arrays())


def graph_to_bytes(graph: Graph) -> bytes:
    buf = io.BytesIO()
    save_graph(graph, buf)
    return buf.getvalue()


def load_graph(path_or_file) -> Graph:
    """Read a graph written by `save_graph` (never unpickles)."""
    if isinstance(path_or_file, (bytes, bytearray)):
        path_or_file = io.BytesIO(path_or_file)
    try:
        with np.load(path_or_file, allow_pickle=False) as z:
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            size = sum(i.file_size for i in z.zip.infolist())
            if size > MAX_GRAPH_BYTES:  # also bounds a compressed archive's expansion
                raise ValueError(f"archive expands to {size} bytes (limit {MAX_GRAPH_BYTES})")
            spec = json.loads(bytes(z["__spec__"]).decode())
            arrays = {k: z[k] for k in z.files if k != "__spec__"}
    except (OSError, ValueError, KeyError, EOFError, TypeError, zipfile.BadZipFile, AttributeError) as e:
        raise ShapeError(f"not a privinfer graph file: {e}") from None
    return Graph.from_spec(spec, arrays)


def count_layers(graph: Graph, kinds: Iterable[str]) -> int:
    kinds = set(kinds)
    return sum(1 for l in graph.layers if l.kind in kinds)
