"""Trained zoo weights: shipped in the package, or trained once and cached.

Weights are stored as compiled privinfer Graphs (`ir.save_graph`, plain `.npz`, never pickle), with a
sidecar `NAME.json` holding the test accuracy, seed, epochs and the npz's sha256. `np.savez` stamps each
zip member with the current time, so the npz is rewritten with fixed member metadata: the same weights
then give the same bytes, and `privinfer zoo train NAME` (run on pinned baseline CPU code paths, see
PORTABLE_ENV) can be checked bit-for-bit against the shipped file. Only networks whose npz stays under
1 MB ship (the MNIST-shaped ones); minionn-cifar (1.3 MB, and trained on a synthetic stand-in anyway)
is trained on first use (a few CPU minutes) and cached in `$PRIVINFER_CACHE/zoo` or
`~/.cache/privinfer/zoo/`.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ShapeError
from ..model.compile import compile_model
from ..model.ir import Graph, load_graph, save_graph
from ..model.reference import run_reference
from .data import load_dataset
from .networks import NETWORKS, build_network, get_info

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED = tuple(n for n, i in NETWORKS.items() if i.dataset == "digits" and i.shipped)
MAX_SHIPPED_BYTES = 1_000_000
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)
# Same seed and thread count still round differently on AVX2 vs AVX-512 machines (measured: other
# sha256). Shipped weights are therefore trained on the x86-64 baseline code paths of ATen, oneDNN
# and MKL (MKL's "conditional numerical reproducibility" mode), which every x86-64 CPU runs alike.
PORTABLE_ENV = {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41", "MKL_CBWR": "COMPATIBLE",
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cache_root() -> Path:
    """$PRIVINFER_CACHE or ~/.cache/privinfer: trained weights (zoo/) and noise-aware models (noisy/)."""
    return Path(os.environ.get("PRIVINFER_CACHE") or Path.home() / ".cache" / "privinfer")


def cache_dir() -> Path:
    """Where non-shipped weights go: $PRIVINFER_CACHE/zoo or ~/.cache/privinfer/zoo."""
    return cache_root() / "zoo"


def default_dir(name: str) -> Path:
    get_info(name)
    return WEIGHTS_DIR if name in SHIPPED else cache_dir()


def graph_bytes(graph: Graph) -> bytes:
    """`save_graph` output with timestamps and host-dependent zip fields fixed, so equal weights give equal bytes."""
    raw = io.BytesIO()
    save_graph(graph.with_input_range(None), raw)  # the zoo's [0, 1] range comes from its code, not the file
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(raw.getvalue())) as src, \
            zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as dst:
        for member in src.infolist():
            info = zipfile.ZipInfo(member.filename, date_time=_ZIP_TIME)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_STORED
            dst.writestr(info, src.read(member))
    return out.getvalue()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def reference_accuracy(graph: Graph, X: np.ndarray, y: np.ndarray, batch: int = 256) -> float:
    """Top-1 accuracy of the float64 plaintext reference executor."""
    pred = np.concatenate([run_reference(graph, X[i:i + batch]).argmax(1) for i in range(0, len(y), batch)])
    return float((pred == y).mean())


def save_weights(name: str, model: nn.Module, directory: str | os.PathLike | None = None,
                 seed: int | None = None, epochs: int | None = None) -> dict:
    """Compile `model`, write NAME.npz and NAME.json into `directory` (default: shipped dir or cache).

    Returns the sidecar dict. Refuses a model whose architecture is not the zoo's `name`.
    """
    info = get_info(name)
    graph = compile_model(model)
    expected = compile_model(build_network(name)).spec()
    if graph.spec() != expected:
        raise ShapeError(f"model is not the zoo's {name!r} architecture")
    data = graph_bytes(graph)
    directory = Path(directory) if directory is not None else default_dir(name)
    if directory.resolve() == WEIGHTS_DIR and len(data) > MAX_SHIPPED_BYTES:
        raise ShapeError(f"{name}: {len(data)} bytes is over the {MAX_SHIPPED_BYTES}-byte limit for shipped weights")
    X, y = load_dataset(info.dataset, "test")
    meta = {"network": name, "dataset": info.dataset, "test_split": "test",
            "test_accuracy": round(reference_accuracy(graph, X, y), 6),
            "seed": seed, "epochs": epochs, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data),
            "torch": torch.__version__.split("+")[0], "numpy": np.__version__}
    _atomic_write(directory / f"{name}.npz", data)
    _atomic_write(directory / f"{name}.json", (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return meta


def pinned() -> bool:
    """True when this process runs torch/oneDNN/MKL on the fixed baseline instruction set of PORTABLE_ENV."""
    return (all(os.environ.get(k) == v for k, v in PORTABLE_ENV.items())
            and torch.backends.cpu.get_cpu_capability() in ("DEFAULT", "default"))


def train_and_save(name: str, seed: int = 0, epochs: int | None = None, progress: bool = True,
                   directory: str | os.PathLike | None = None, portable: bool = True) -> dict:
    """What `privinfer zoo train NAME` does: deterministic training, then `save_weights`; returns the sidecar.

    With `portable` (the default) training runs in a child process pinned to PORTABLE_ENV, since these
    variables only take effect before torch, oneDNN and MKL first run; about 2x slower than native.
    """
    info = get_info(name)
    epochs = info.epochs if epochs is None else int(epochs)
    directory = Path(directory) if directory is not None else default_dir(name)
    if portable and not pinned():
        args = json.dumps({"name": name, "seed": seed, "epochs": epochs, "progress": progress,
                           "directory": str(directory)})
        code = ("import json, sys; from privinfer.zoo.store import train_and_save; "
                "train_and_save(**json.loads(sys.argv[1]))")
        env = {**os.environ, **PORTABLE_ENV}
        root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
        subprocess.run([sys.executable, "-c", code, args], env=env, check=True)
        return json.loads((directory / f"{name}.json").read_text())
    from .train import train_network
    model, _ = train_network(name, epochs=epochs, seed=seed, progress=progress)
    return save_weights(name, model, directory, seed=seed, epochs=epochs)


def weights_path(name: str) -> Path | None:
    """The npz that `load_model` would read (shipped first, then cache), or None."""
    get_info(name)
    for d in (WEIGHTS_DIR, cache_dir()):
        if (d / f"{name}.npz").is_file():
            return d / f"{name}.npz"
    return None


def read_meta(name: str) -> dict | None:
    path = weights_path(name)
    side = path.with_suffix(".json") if path else None
    return json.loads(side.read_text()) if side and side.is_file() else None


def load_model(name: str, train_if_missing: bool = True, progress: bool = False) -> Graph:
    """The trained Graph for zoo network `name`; trains and caches it when it is neither shipped nor cached."""
    path = weights_path(name)
    if path is None:
        if not train_if_missing:
            raise FileNotFoundError(f"no weights for {name!r} in {WEIGHTS_DIR} or {cache_dir()}")
        train_and_save(name, progress=progress, directory=cache_dir())
        path = cache_dir() / f"{name}.npz"
    data = path.read_bytes()
    side = path.with_suffix(".json")
    if side.is_file():
        want = json.loads(side.read_text()).get("sha256")
        if want and hashlib.sha256(data).hexdigest() != want:
            raise ShapeError(f"{path}: sha256 does not match {side.name}; the weights file is corrupt")
    graph = load_graph(data)
    expected = compile_model(build_network(name))
    if graph.with_input_range(None).spec() != expected.with_input_range(None).spec():
        raise ShapeError(f"{path} does not hold the {name!r} architecture")
    return graph.with_input_range(expected.input_range)  # every zoo network takes pixels in [0, 1]


def graph_to_torch(name: str, graph: Graph) -> nn.Sequential:
    """Rebuild the zoo torch model and copy the Graph's weights in (zoo nets have no BatchNorm to unfold;
    cryptonets' ZeroPad2d, folded into the conv's padding by the compiler, stays a torch layer)."""
    model = build_network(name)
    if compile_model(model).with_input_range(None).spec() != graph.with_input_range(None).spec():
        raise ShapeError(f"graph is not the zoo's {name!r} architecture")
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    layers = [l for l in graph.layers if l.kind in ("conv2d", "linear")]
    with torch.no_grad():
        for m, l in zip(weighted, layers, strict=True):
            m.weight.copy_(torch.from_numpy(l.weight).reshape(m.weight.shape))
            m.bias.copy_(torch.from_numpy(l.bias))
    return model.eval()


def load_torch_model(name: str, train_if_missing: bool = True) -> nn.Sequential:
    """The trained zoo network as a torch module (float32, eval mode)."""
    return graph_to_torch(name, load_model(name, train_if_missing=train_if_missing))
