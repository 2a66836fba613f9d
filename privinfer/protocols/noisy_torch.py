"""Helpers for the noisy protocol's training side: IR graph <-> torch, and the zoo's models and data.

The zoo (`privinfer.zoo`) provides trained models and the digits data; until its public API is importable
we fall back on its modules (`privinfer.zoo.networks`, `privinfer.zoo.data`) and, failing that, on a
built-in copy of minionn-mnist and scikit-learn's digits placed in a 28x28 canvas the same way.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import PrivinferError
from ..model.compile import compile_model
from ..model.ir import AvgPool2d, Conv2d, Flatten, Graph, Linear, MaxPool2d, Poly, ReLU, graph_to_bytes, load_graph, save_graph
from ..model.torch_layers import PolyAct


def cache_dir() -> Path:
    """`$PRIVINFER_CACHE` or `~/.cache/privinfer`, created on demand."""
    root = Path(os.environ.get("PRIVINFER_CACHE") or Path.home() / ".cache" / "privinfer")
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def torch_threads(n: int | None = None):
    """Run small-model training with `n` intra-op threads (default `$PRIVINFER_TRAIN_THREADS` or 1).

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


def graph_digest(graph: Graph) -> str:
    return hashlib.sha256(graph_to_bytes(graph)).hexdigest()[:12]


# --- IR <-> torch ----------------------------------------------------------------------------------

def layer_to_torch(layer) -> list[nn.Module]:
    """One IR layer as torch modules (float32), weights copied."""
    if isinstance(layer, Conv2d):
        t, b, l, r = layer.padding
        out_c, in_c, kh, kw = layer.weight.shape
        conv = nn.Conv2d(in_c, out_c, (kh, kw), stride=layer.stride, padding=(t, l) if (t, l) == (b, r) else 0)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(layer.weight))
            conv.bias.copy_(torch.from_numpy(layer.bias))
        return [conv] if (t, l) == (b, r) else [nn.ZeroPad2d((l, r, t, b)), conv]
    if isinstance(layer, Linear):
        lin = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(layer.weight))
            lin.bias.copy_(torch.from_numpy(layer.bias))
        return [lin]
    if isinstance(layer, AvgPool2d):
        return [nn.AvgPool2d(layer.kernel, layer.stride, layer.padding, count_include_pad=True)]
    if isinstance(layer, MaxPool2d):
        return [nn.MaxPool2d(layer.kernel, layer.stride)]
    if isinstance(layer, ReLU):
        return [nn.ReLU()]
    if isinstance(layer, Poly):
        return [PolyAct(layer.coeffs)]
    if isinstance(layer, Flatten):
        return [nn.Flatten()]
    raise PrivinferError(f"cannot convert {type(layer).__name__} to torch")


def graph_to_torch(graph: Graph) -> nn.Sequential:
    """A float32 nn.Sequential computing the same function as `graph` (carries `input_shape`)."""
    mods = [m for layer in graph.layers for m in layer_to_torch(layer)]
    seq = nn.Sequential(*mods).float()
    seq.input_shape = tuple(graph.input_shape)
    return seq


def torch_to_graph(module: nn.Module, input_shape, names) -> Graph:
    """Compile `module` (one IR layer per name) back into a Graph with the given layer names."""
    g = compile_model(module, tuple(input_shape))
    if len(g.layers) != len(names):
        raise PrivinferError(f"compiled {len(g.layers)} layers, expected {len(names)}")
    return Graph(g.input_shape, g.layers, tuple(names), g.input_range)


# --- zoo models and data ---------------------------------------------------------------------------

def _builtin_minionn() -> nn.Sequential:
    m = nn.Sequential(nn.Conv2d(1, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(16, 16, 5), nn.ReLU(),
                      nn.MaxPool2d(2), nn.Flatten(), nn.Linear(256, 100), nn.ReLU(), nn.Linear(100, 10))
    m.input_shape = (1, 28, 28)
    return m


def load_data(name: str = "digits", split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(X float32 (N, 1, 28, 28) in [0, 1], y int64) from the zoo, or a built-in copy of its digits loader."""
    try:
        from ..zoo import load_dataset  # type: ignore[attr-defined]
    except ImportError:
        try:
            from ..zoo.data import load_dataset  # type: ignore[no-redef]
        except ImportError:
            load_dataset = None
    if load_dataset is not None:
        return load_dataset(name, split)
    if name not in ("digits", "minionn-mnist"):
        raise PrivinferError(f"dataset {name!r} needs privinfer.zoo")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    import torch.nn.functional as F
    d = load_digits()
    x = torch.from_numpy(d.images.astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(20, 20), mode="bilinear", align_corners=False).clamp_(0.0, 1.0)
    X = np.zeros((len(x), 1, 28, 28), dtype=np.float32)
    X[:, :, 4:24, 4:24] = x.numpy()
    y = d.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=0.25, random_state=0, stratify=y)
    idx = {"train": np.sort(tr), "test": np.sort(te), "all": np.arange(len(y))}[split]
    return X[idx].copy(), y[idx].copy()


def load_base_graph(name: str, progress: bool = False) -> Graph:
    """The trained zoo model `name` as a Graph (zoo's `load_model`, or a cached fallback training run)."""
    try:
        from ..zoo import load_model  # type: ignore[attr-defined]
        return load_model(name)
    except ImportError:
        pass
    path = cache_dir() / f"noisy-fallback-{name}.npz"
    if path.exists():
        return load_graph(path)
    try:
        from ..zoo.train import train_network  # type: ignore[attr-defined]
        model, _ = train_network(name, progress=progress)
    except ImportError:
        if name != "minionn-mnist":
            raise PrivinferError(f"model {name!r} needs privinfer.zoo") from None
        model = _train_builtin(progress)
    graph = compile_model(model)
    save_graph(graph, path)
    return graph


def _train_builtin(progress: bool) -> nn.Module:
    import torch.nn.functional as F
    from tqdm.auto import tqdm
    X, y = load_data("digits", "train")
    Xt, yt = torch.from_numpy(X), torch.from_numpy(y)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = _builtin_minionn()
        gen = torch.Generator().manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        for _ in tqdm(range(30), desc="train minionn-mnist (fallback)", disable=not progress):
            for idx in torch.randperm(len(yt), generator=gen).split(32):
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(Xt[idx]), yt[idx]).backward()
                opt.step()
    return model.eval()


def resolve_model(model) -> tuple[Graph, str]:
    """(Graph, identifier for cache keys) from a zoo name, a torch module or a Graph."""
    if isinstance(model, str):
        return load_base_graph(model), model
    graph = compile_model(model)
    return graph, f"graph-{graph_digest(graph)}"
