"""The protocol interface and registry.

A protocol is one module that subclasses `Protocol` and decorates it with `@register`. The server builds
one `Protocol` per served model (server-wide preparation: validation, precomputation, fine-tuning) and
asks it for a `ServerSide` per client connection. The client builds a `ClientSide` from the server's
WELCOME message. Both sides then talk only through a `Channel`:

    client                                  server
    HELLO {protocol, options}   ─────────▶
                                ◀─────────  WELCOME {graph spec, protocol info}
    ClientSide.setup(ch)        ◀────────▶  ServerSide.setup(ch)       (keys, offline phase)
    QUERY {batch}  + ClientSide.query(ch, x) ◀──▶ ServerSide.query(ch, meta)   (repeated)
    BYE                         ─────────▶
"""
from __future__ import annotations

import importlib
from typing import Any, ClassVar

import numpy as np

from ..errors import PrivinferError, UnsupportedLayerError
from ..model.ir import Graph
from ..transport import Channel

BUILTIN = {"plain": "privinfer.protocols.plain", "he": "privinfer.protocols.he",
           "ss": "privinfer.protocols.ss", "noisy": "privinfer.protocols.noisy",
           "cheetah": "privinfer.protocols.cheetah", "hybrid": "privinfer.protocols.hybrid"}
_REGISTRY: dict[str, type["Protocol"]] = {}


class ServerSide:
    """One client connection on the server."""

    def welcome(self) -> dict:
        """Protocol parameters the client needs (JSON-able); the graph spec is added by the server."""
        return {}

    def setup(self, ch: Channel) -> None:
        """Once per connection, before any query: keys, offline material."""

    def query(self, ch: Channel, meta: dict) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release per-connection resources (processes, keys). Must not raise."""


class ClientSide:
    """The client's half; `query` receives a validated float64 batch (B, *input_shape).

    A protocol with an input-independent phase inside each query sets `self.query_timing =
    {"offline_s": ..., "online_s": ...}` in `query`; the session records it per query.
    """
    query_timing: dict | None = None
    #: set by the session when it shows progress: a callable taking one line (set-up sub-steps)
    report = None

    def setup(self, ch: Channel) -> None:
        """Once per connection, before any query."""

    def query_meta(self, x: np.ndarray) -> dict:
        return {"batch": int(x.shape[0])}

    def query(self, ch: Channel, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def privacy(self) -> dict:
        """What this session guarantees, precisely (for stats and benchmark records)."""
        return {}

    def close(self) -> None:
        """Release resources. Must not raise."""


class Protocol:
    """Server-wide state for one served model under one protocol."""
    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    #: option name -> default, for options the server side accepts (given to __init__)
    server_options: ClassVar[dict[str, Any]] = {}
    #: option name -> default, for options the client chooses (sent in HELLO, given to both sides)
    client_options: ClassVar[dict[str, Any]] = {}
    #: client options that stay on the client (secrets): never sent in HELLO
    local_client_options: ClassVar[frozenset] = frozenset()
    #: server options a one-machine PrivateSession (and the loopback bench) adds unless the user sets them
    local_session_defaults: ClassVar[dict[str, Any]] = {}
    #: IR layer kinds this protocol can run
    supported_kinds: ClassVar[tuple[str, ...]] = ("conv2d", "linear", "avgpool2d", "maxpool2d", "relu", "poly", "flatten")
    #: links this protocol opens besides the client<->server channel (benchmark records list them)
    inner_links: ClassVar[tuple[str, ...]] = ()

    def __init__(self, graph: Graph, **options):
        self.graph = graph
        self.options = {**self.server_options, **_known(options, self.server_options, self.name, "server")}
        self.check_graph(graph)

    @classmethod
    def check_graph(cls, graph: Graph) -> None:
        """Refuse a graph holding layers this protocol cannot run, naming them and the supported list."""
        bad = sorted({f"{n} ({l.kind})" for n, l in zip(graph.names, graph.layers) if l.kind not in cls.supported_kinds})
        if bad:
            raise UnsupportedLayerError(f"protocol {cls.name!r} cannot run layer(s) {', '.join(bad)}; "
                                        f"supported: {', '.join(cls.supported_kinds)}")

    @property
    def privacy_warning(self) -> str | None:
        """A line the server prints when it starts, where the operator's options buy less privacy than their
        cost suggests (`he`: flood mode on parameters that cannot reach its target); None for most."""
        return None

    def server_side(self, client_options: dict) -> ServerSide:
        raise NotImplementedError

    @classmethod
    def client_side(cls, welcome: dict, graph: Graph, **client_options) -> ClientSide:
        """`graph` is the public architecture (weights zero) unless the protocol ships some weights."""
        raise NotImplementedError

    @classmethod
    def validate_client_options(cls, options: dict) -> dict:
        return {**cls.client_options, **_known(options, cls.client_options, cls.name, "client")}


def _known(options: dict, allowed: dict, proto: str, side: str) -> dict:
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise PrivinferError(f"protocol {proto!r} has no {side} option(s) {unknown}; "
                             f"{side} options: {sorted(allowed) or 'none'}")
    return dict(options)


def split_options(cls: type[Protocol], options: dict) -> tuple[dict, dict]:
    """Split user options into (server, client); unknown names raise with the valid lists."""
    unknown = sorted(set(options) - set(cls.server_options) - set(cls.client_options))
    if unknown:
        raise PrivinferError(f"protocol {cls.name!r} has no option(s) {unknown}; server options: "
                             f"{sorted(cls.server_options)}, client options: {sorted(cls.client_options)}")
    return ({k: v for k, v in options.items() if k in cls.server_options},
            {k: v for k, v in options.items() if k in cls.client_options})


def register(cls: type[Protocol]) -> type[Protocol]:
    """Class decorator: make a protocol available by its `name`."""
    if not cls.name:
        raise PrivinferError(f"{cls.__name__} needs a name")
    _REGISTRY[cls.name] = cls
    return cls


#: (protocol, option, value) -> the protocol that setting really selects: `ss` without a dealer is CHEETAH
ALIASES = {("ss", "dealer", "none"): "cheetah"}


def resolve_protocol(name: str, options: dict) -> tuple[str, dict]:
    """The protocol a (name, options) pair selects, and the options left for it.

    Why: `ss` with `dealer="none"` (MiniONN/GAZELLE's two-party setting) is not CrypTen with a missing dealer
    but a different engine (`cheetah`, SPU's CHEETAH); the front doors accept the spelling users look for.
    """
    for (alias, key, value), target in ALIASES.items():
        if name == alias and options.get(key) == value:
            return target, {k: v for k, v in options.items() if k != key}
    return name, dict(options)


def get_protocol(name: str) -> type[Protocol]:
    """The protocol class registered as `name`, importing built-in modules on first use."""
    if name not in _REGISTRY and name in BUILTIN:
        try:
            importlib.import_module(BUILTIN[name])
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("privinfer"):
                raise PrivinferError(f"protocol {name!r} is not available in this build") from None
            raise
    if name not in _REGISTRY:
        raise PrivinferError(f"unknown protocol {name!r}; available: {sorted(set(BUILTIN) | set(_REGISTRY))}")
    return _REGISTRY[name]


def available_protocols() -> list[str]:
    return sorted(set(BUILTIN) | set(_REGISTRY))
