"""Import CrypTen 0.4.1 on current torch.

CrypTen imports `torch.onnx._internal.registration`, which torch 2.6 moved to
`torch.onnx._internal.torchscript_exporter.registration`. We alias the old name in `sys.modules`
before the import. privinfer never uses CrypTen's ONNX importer (it is broken on current torch);
models are compiled from our own IR to CrypTen operations instead.
"""
from __future__ import annotations

import importlib
import sys

_OLD = "torch.onnx._internal.registration"
_NEW = "torch.onnx._internal.torchscript_exporter.registration"


def load_crypten():
    """Return the `crypten` module, aliasing the moved torch module first if needed."""
    if "crypten" in sys.modules:
        return sys.modules["crypten"]
    try:
        importlib.import_module(_OLD)
    except ImportError:
        sys.modules[_OLD] = importlib.import_module(_NEW)
    import crypten  # noqa: E402  (after the alias on purpose)
    return crypten
