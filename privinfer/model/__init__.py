"""Model front end: the layer IR, the torch compiler and the plaintext reference executor."""
from .ir import (AvgPool2d, Conv2d, Flatten, Graph, Layer, Linear, MaxPool2d, Poly, ReLU,
                 load_graph, save_graph)
from .compile import compile_model, SUPPORTED_MODULES
from .reference import run_reference

__all__ = ["AvgPool2d", "Conv2d", "Flatten", "Graph", "Layer", "Linear", "MaxPool2d", "Poly", "ReLU",
           "compile_model", "SUPPORTED_MODULES", "run_reference", "load_graph", "save_graph"]
