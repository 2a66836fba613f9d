"""`privinfer compile`: turn the user's saved torch model into a privinfer graph file (.npz, no pickle).

Why: `serve` only reads graph files (they hold arrays and JSON, so loading one cannot run code), while
users save `.pt` files. Two forms are read:

* a state dict (`torch.save(model.state_dict(), "m.pt")`) plus the importable class that builds the
  model (`--class mypkg.nets:Net`, constructed without arguments); loaded with `weights_only=True`;
* a whole pickled module (`torch.save(model, "m.pt")`) only with `--trust`, because unpickling runs
  code from the file: use it for your own files only.

TorchScript and `torch.export` archives are refused with that advice: the compiler reads torch modules
and fx graphs of `torch.nn.functional` calls, not scripted or ATen-level programs.
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

from .errors import PrivinferError


def _import_class(spec: str):
    mod, _, name = spec.partition(":")
    if not mod or not name:
        raise PrivinferError(f"--class must look like package.module:ClassName, got {spec!r}")
    sys.path.insert(0, str(Path.cwd()))
    try:
        obj = importlib.import_module(mod)
        for part in name.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise PrivinferError(f"cannot import {spec}: {e}") from None
    finally:
        sys.path.pop(0)
    return obj


def load_torch_file(path: str, cls: str | None = None, trust: bool = False):
    """The torch module saved in `path` (see the module docstring for the accepted forms)."""
    import torch
    p = Path(path)
    if not p.is_file():
        raise PrivinferError(f"model file {path} does not exist")
    import zipfile
    if zipfile.is_zipfile(p):
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
        kind = ("a torch.export archive" if any("exported_program" in n or n.startswith("models/") for n in names)
                else "a TorchScript archive" if any("/code/" in n for n in names) else None)
        if kind:
            raise PrivinferError(f"{path} is {kind}, which cannot be compiled; save a state dict "
                                 f"(torch.save(model.state_dict(), ...)) and pass --class module:Class")
    if cls is not None:
        model = _import_class(cls)()
        try:
            state = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise PrivinferError(f"cannot read a state dict from {path}: {e}") from None
        if isinstance(state, torch.nn.Module):
            state = state.state_dict()
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError) as e:
            raise PrivinferError(f"{path} does not fit {cls}: {str(e).splitlines()[0]}") from None
        return model.eval()
    try:
        obj = torch.load(p, map_location="cpu", weights_only=not trust)
    except Exception as e:
        if not trust:
            raise PrivinferError(f"{path} is not a plain state dict; pass --class module:Class (state dict) or, for "
                                 f"a whole pickled module you made yourself, --trust") from None
        raise PrivinferError(f"cannot read {path}: {e}") from None
    if isinstance(obj, torch.nn.Module):
        return obj.eval()
    raise PrivinferError(f"{path} holds a state dict; pass --class module:Class to say which model it fills")


def compile_file(path: str, out: str, *, cls: str | None = None, trust: bool = False,
                 input_shape=None, input_range=(0.0, 1.0)):
    """Compile the model in `path` and write the graph to `out`; returns the Graph."""
    from .model import compile_model, save_graph
    if not out.endswith(".npz"):
        raise PrivinferError(f"output must be an .npz graph file, got {out!r}")
    graph = compile_model(load_torch_file(path, cls, trust), input_shape, input_range)
    save_graph(graph, out)
    return graph
