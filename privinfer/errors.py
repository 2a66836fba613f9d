"""Typed errors: every failure a user or a peer can cause maps to one of these."""


class PrivinferError(Exception):
    """Base class of every error privinfer raises on purpose."""


class UnsupportedLayerError(PrivinferError):
    """A model holds a layer that the IR (or a protocol) cannot express."""


class ShapeError(PrivinferError):
    """An input or a layer does not have the shape the graph expects."""


class ProtocolError(PrivinferError):
    """A peer sent something malformed, unexpected, oversize, or too late."""


class PeerError(ProtocolError):
    """The peer reported an error of its own (carried in an ERROR frame)."""


class TimeoutError_(ProtocolError):
    """A read or a whole query took longer than its configured timeout."""


class ParameterError(PrivinferError):
    """No secure parameter set fits the requested computation."""


class BudgetExceededError(PrivinferError):
    """A query would spend more privacy budget (epsilon) than the session allows."""


class ResourceLimitError(ProtocolError):
    """A request exceeds a configured limit (batch size, sessions, frame size)."""


class WorkerDied(ProtocolError):
    """The server worker process holding a session exited (or the server shut down); the session is lost."""
