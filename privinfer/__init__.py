"""privinfer: private neural-network inference (HE, 2PC, noisy offloading) on torch models."""
from .errors import (BudgetExceededError, InputRangeError, OptionRefusedError, ParameterError, PeerError,
                     PeerOptionRefusedError, PeerResourceLimitError, PrivinferError, ProtocolError,
                     ResourceLimitError, ShapeError, UnsupportedLayerError)
from .model import Graph, compile_model, run_reference
from .server import Server, serve
from .session import PrivateSession, RemoteSession, connect

__version__ = "0.1.0"
__all__ = ["PrivateSession", "RemoteSession", "Server", "serve", "connect", "compile_model", "run_reference",
           "Graph", "PrivinferError", "ProtocolError", "PeerError", "ShapeError", "UnsupportedLayerError",
           "ParameterError", "BudgetExceededError", "ResourceLimitError", "InputRangeError",
           "PeerResourceLimitError", "OptionRefusedError", "PeerOptionRefusedError", "__version__"]
