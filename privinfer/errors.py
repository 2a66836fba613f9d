"""Typed errors: every failure a user or a peer can cause maps to one of these."""


class PrivinferError(Exception):
    """Base class of every error privinfer raises on purpose."""


class UnsupportedLayerError(PrivinferError):
    """A model holds a layer that the IR (or a protocol) cannot express."""


class ShapeError(PrivinferError):
    """An input or a layer does not have the shape the graph expects."""


class InputRangeError(ShapeError):
    """An input lies outside the value range the served model was calibrated for (e.g. 0-255 pixels vs [0, 1])."""


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


class PeerResourceLimitError(PeerError, ResourceLimitError):
    """The peer refused a request for exceeding one of its limits (e.g. the server's max_batch)."""


class QueryLimitError(ResourceLimitError):
    """A session asked for more replies than the server's per-key query cap (he circuit-private mode: the
    flood's statistical margin is sized for at most that many replies under one key)."""


class WorkerDied(ProtocolError):
    """The server worker process holding a session exited (or the server shut down); the session is lost."""


class PrivacyChoiceError(ProtocolError):
    """The server chose (protocol "auto", or a hybrid plan) to give the client less privacy than the client
    accepted: no input privacy (`plain`), or a DP release the client did not opt into with an epsilon."""


class OptionRefusedError(ProtocolError):
    """The server refuses a client option its operator did not allow (e.g. `he` batch packing on a server whose
    flood mode protects its weights: batch replies would not)."""


class PeerOptionRefusedError(PeerError, OptionRefusedError):
    """The server refused one of this client's options (`OptionRefusedError` on its side)."""
