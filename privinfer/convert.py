"""`privinfer compile`: turn the user's saved torch model into a privinfer graph file (.npz, no pickle).

Why: `serve` only reads graph files (they hold arrays and JSON, so loading one cannot run code), while
users save `.pt` files. Two forms are read:

* a state dict (`torch.save(model.state_dict(), "m.pt")`) plus the importable class that builds the
  model (`--class mypkg.nets:Net`, constructed without arguments); loaded with `weights_only=True`;
* a whole pickled module (`torch.save(model, "m.pt")`) only with `--trust`, because unpickling runs
  code from the file: use it for your own files only.

* a TorchScript file of an `nn.Sequential` (`torch.jit.save(torch.jit.script(seq), "m.pt")`): its layers
  are read back into torch modules (a scripted class model's `forward` code cannot be, so it is refused).

`torch.export` archives are refused with the state-dict advice: the compiler reads torch modules and fx
graphs of `torch.nn.functional` calls, not ATen-level programs.
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
        if any("exported_program" in n or n.startswith("models/") for n in names):
            raise PrivinferError(f"{path} is a torch.export archive, which cannot be compiled; save a state dict "
                                 f"(torch.save(model.state_dict(), ...)) and pass --class module:Class")
        if any("/code/" in n for n in names):
            return from_torchscript(torch.jit.load(str(p), map_location="cpu"), path)
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


def _copy(dst, src, *names):
    import torch
    with torch.no_grad():
        for n in names:
            v = getattr(src, n, None)
            if v is not None:
                getattr(dst, n).copy_(v)
    return dst


def _rebuild(c, where: str):
    """A torch module equal to the scripted module `c` (the layer kinds the compiler reads)."""
    from torch import nn
    kind = c.original_name
    if kind == "Sequential":
        return nn.Sequential(*(m for n, ch in c.named_children() if (m := _rebuild(ch, f"{where}.{n}")) is not None))
    if kind == "Conv2d":
        m = nn.Conv2d(c.in_channels, c.out_channels, tuple(c.kernel_size), tuple(c.stride),
                      c.padding if isinstance(c.padding, str) else tuple(c.padding), tuple(c.dilation), c.groups,
                      bias=c.bias is not None, padding_mode=c.padding_mode)
        return _copy(m, c, "weight", "bias")
    if kind == "Linear":
        return _copy(nn.Linear(c.in_features, c.out_features, bias=c.bias is not None), c, "weight", "bias")
    if kind in ("BatchNorm1d", "BatchNorm2d"):
        m = getattr(nn, kind)(c.running_mean.shape[0], eps=c.eps, affine=c.weight is not None)
        return _copy(m, c, "weight", "bias", "running_mean", "running_var").eval()
    if kind == "MaxPool2d":
        return nn.MaxPool2d(c.kernel_size, c.stride, c.padding, c.dilation, ceil_mode=c.ceil_mode)
    if kind == "AvgPool2d":
        return nn.AvgPool2d(c.kernel_size, c.stride, c.padding, c.ceil_mode, c.count_include_pad, c.divisor_override)
    if kind == "Flatten":
        return nn.Flatten(c.start_dim, c.end_dim)
    if kind in ("ReLU", "Dropout", "Identity"):
        return nn.ReLU() if kind == "ReLU" else None
    raise PrivinferError(f"TorchScript layer {where} ({kind}) cannot be read back; supported in a scripted "
                         f"nn.Sequential: Conv2d, Linear, BatchNorm1d/2d, ReLU, MaxPool2d, AvgPool2d, Flatten, "
                         f"Dropout; otherwise save a state dict and pass --class module:Class")


def from_torchscript(scripted, path: str = "model"):
    """An equivalent torch module for a scripted (or traced) `nn.Sequential` (TorchScript has no fx trace).

    Only the Sequential's own chain is meaningful, so a scripted class model (arbitrary `forward` code) is
    refused with the state-dict advice.
    """
    if scripted.original_name != "Sequential":
        raise PrivinferError(f"{path} is a TorchScript {scripted.original_name}, whose forward code cannot be read; "
                             f"script an nn.Sequential, or save a state dict and pass --class module:Class")
    return _rebuild(scripted, "model").eval()


def compile_file(path: str, out: str, *, cls: str | None = None, trust: bool = False,
                 input_shape=None, input_range=(0.0, 1.0)):
    """Compile the model in `path` and write the graph to `out`; returns the Graph."""
    from .model import compile_model, save_graph
    if not out.endswith(".npz"):
        raise PrivinferError(f"output must be an .npz graph file, got {out!r}")
    graph = compile_model(load_torch_file(path, cls, trust), input_shape, input_range)
    save_graph(graph, out)
    return graph
