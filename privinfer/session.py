"""The one-call API: `PrivateSession(model, protocol)` and `connect(host, port)`.

`PrivateSession` starts the server in a separate OS process on loopback (or a thread, for tests) and
talks to it over TCP exactly as a deployed client would; `connect` reaches a server started with
`privinfer serve` or `privinfer.serve`.
"""
from __future__ import annotations

import atexit
import contextlib
import multiprocessing as mp
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ._process import no_main_reimport
from .errors import PeerError, PrivacyChoiceError, PrivinferError, ProtocolError
from .model import compile_model
from .model.ir import Graph, graph_to_bytes, load_graph
from .model.reference import check_input, check_input_range
from .privacy.guarantees import check_guarantee
from .protocols.base import available_protocols, get_protocol, resolve_protocol, split_options
from .transport import Channel, DEFAULT_TIMEOUT, FrameType, connect as tcp_connect


@dataclass
class QueryStats:
    batch: int
    latency_s: float
    bytes_client_to_server: int
    bytes_server_to_client: int
    rounds: int
    offline_s: float = 0.0  # input-independent work inside this query (protocols report it)
    online_s: float = 0.0
    bytes_dealer: int = 0  # traffic between a party and a helper (2PC dealer), both directions


@dataclass
class SessionStats:
    protocol: str
    setup_s: float = 0.0
    setup_bytes_client_to_server: int = 0
    setup_bytes_server_to_client: int = 0
    queries: list[QueryStats] = field(default_factory=list)
    privacy: dict = field(default_factory=dict)

    @property
    def last(self) -> QueryStats | None:
        return self.queries[-1] if self.queries else None

    @property
    def setup_bytes(self) -> int:
        return self.setup_bytes_client_to_server + self.setup_bytes_server_to_client

    def as_dict(self) -> dict:
        return {**asdict(self), "setup_bytes": self.setup_bytes}

    def __str__(self) -> str:
        q = self.last
        tail = (f"last query: batch {q.batch}, {q.latency_s * 1e3:.1f} ms, {q.bytes_client_to_server:,} B up, "
                f"{q.bytes_server_to_client:,} B down, {q.rounds} rounds" if q else "no query yet")
        return (f"[{self.protocol}] setup {self.setup_s:.2f} s, {self.setup_bytes:,} B; {tail}; "
                f"privacy {self.privacy}")


@contextlib.contextmanager
def step(what: str, show: bool, after: float = 1.0):
    """Say on stderr when a step (key generation, server preparation) runs longer than `after` seconds,
    and then how long it took; quick steps and early errors print nothing (errors stay one line)."""
    if not show:
        yield
        return
    t0, said = time.perf_counter(), threading.Event()

    def say():
        print(f"privinfer: {what} ...", file=sys.stderr, flush=True)
        said.set()

    timer = threading.Timer(after, say)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        timer.join()
    if said.is_set():
        print(f"privinfer: {what}: done in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)


def _reporter(protocol: str):
    """The progress line printer a protocol's set-up uses for its sub-steps (key generation, upload)."""
    def report(msg: str) -> None:
        print(f"privinfer: {protocol}: {msg}", file=sys.stderr, flush=True)
    return report


def warn_if_not_private(privacy: dict, protocol: str) -> None:
    """The one-line warning a client prints when its session protects nothing."""
    if privacy.get("guarantee") == "none":
        print(f"privinfer: warning: protocol {protocol!r} gives no privacy: the server sees your input in the "
              f"clear", file=sys.stderr, flush=True)


def _accept_auto_choice(protocol: str, info: dict, client_options: dict) -> None:
    """A client that said "auto" lets the server's planner choose, but not below what it accepted: never
    `plain` (no input privacy), and a DP release (`noisy`, or a hybrid plan with a noisy segment) only when
    the client passed its own `epsilon`."""
    if protocol == "plain":
        raise PrivacyChoiceError("the server's planner chose 'plain' (the input in the clear); connect with "
                                 "protocol='plain' explicitly if that is acceptable")
    plan = str((info or {}).get("plan") or "")
    if (protocol == "noisy" or "noisy" in plan) and "epsilon" not in client_options:
        raise PrivacyChoiceError(f"the server's planner chose a differentially private release ({protocol} "
                                 f"{plan}); pass epsilon=... to accept one")


class RemoteSession:
    """A client connected to a privinfer server; `infer(x)` returns logits.

    `progress=True` prints the set-up steps (keys, offline phase) with their duration; `warn=False` silences
    the warning printed when the session gives no privacy (protocol `plain`).
    """

    def __init__(self, channel: Channel, protocol: str, *, progress: bool = False, warn: bool = True,
                 **client_options):
        self.channel = channel
        auto = protocol == "auto"  # the server's planner chose: its WELCOME names the protocol
        self.protocol_cls = None if auto else get_protocol(protocol)
        opts = client_options if auto else self.protocol_cls.validate_client_options(client_options)
        self.stats = SessionStats(protocol=protocol)
        t0 = time.perf_counter()
        before = channel.stats.copy()
        try:
            # secrets that never leave this machine: with "auto" the protocol is not known yet, so every
            # protocol's local-only options stay here
            local = (self.protocol_cls.local_client_options if self.protocol_cls else
                     frozenset().union(*(get_protocol(p).local_client_options for p in available_protocols())))
            sent = {k: v for k, v in client_options.items() if k not in local}
            channel.send_json({"protocol": protocol, "options": sent}, FrameType.HELLO)
            welcome = channel.recv_json(FrameType.WELCOME)
            if auto:
                protocol = str(welcome.get("protocol"))
                _accept_auto_choice(protocol, welcome.get("info", {}), client_options)
                self.protocol_cls = get_protocol(protocol)
                opts = self.protocol_cls.validate_client_options(client_options)
                self.stats.protocol = protocol
            self.graph = Graph.from_spec(welcome["graph"])  # public architecture, zero weights
            self.limits = welcome.get("limits", {})
            self.client = self.protocol_cls.client_side(welcome.get("info", {}), self.graph, **opts)
            if progress:
                self.client.report = _reporter(protocol)
            with step(f"{protocol}: session set-up (keys, offline phase)", progress):
                self.client.setup(channel)
        except BaseException:
            channel.close()
            if getattr(self, "client", None) is not None:
                self.client.close()
            raise
        d = channel.stats - before
        self.stats.setup_s = time.perf_counter() - t0
        self.stats.setup_bytes_client_to_server, self.stats.setup_bytes_server_to_client = d.bytes_sent, d.bytes_received
        side = getattr(self.client, "setup_side", None) or {}  # set-up traffic outside the Channel (2PC links)
        self.stats.setup_bytes_client_to_server += int(side.get("side_bytes_client_to_server", 0))
        self.stats.setup_bytes_server_to_client += int(side.get("side_bytes_server_to_client", 0))
        self.stats.privacy = self.client.privacy()
        check_guarantee(self.stats.privacy)
        if warn:
            warn_if_not_private(self.stats.privacy, protocol)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.graph.input_shape

    def infer(self, x) -> np.ndarray:
        """Logits for one sample (C, H, W) -> (classes,) or a batch (B, C, H, W) -> (B, classes)."""
        single = np.asarray(x).shape == tuple(self.graph.input_shape)
        batch = check_input(self.graph, x)
        check_input_range(self.graph, batch)  # out-of-range input would give a confident wrong answer
        if self.channel.closed:
            raise PrivinferError("session is closed")
        meta = self.client.query_meta(batch)  # may refuse (privacy budget) before anything is sent
        before = self.channel.stats.copy()
        t0 = time.perf_counter()
        try:
            self.channel.send_json(meta, FrameType.QUERY)
            logits = np.asarray(self.client.query(self.channel, batch), dtype=np.float64)
        except ProtocolError as e:
            # a server that refuses (e.g. batch > max_batch) answers ERROR and closes while we are still
            # sending: report its typed reason, not our "broken pipe"
            reason = None if isinstance(e, PeerError) else self._peer_reason()
            self.close(send_bye=False)
            if reason is not None:
                raise reason from None
            raise
        except BaseException:
            self.close(send_bye=False)
            raise
        latency = time.perf_counter() - t0
        d = self.channel.stats - before
        timing = getattr(self.client, "query_timing", None) or {}
        offline = float(timing.get("offline_s", 0.0))
        # protocols whose traffic bypasses the Channel (CrypTen's gloo) report it as side_* counters
        self.stats.queries.append(QueryStats(
            int(batch.shape[0]), latency, d.bytes_sent + int(timing.get("side_bytes_client_to_server", 0)),
            d.bytes_received + int(timing.get("side_bytes_server_to_client", 0)),
            d.rounds + int(timing.get("side_rounds", 0)), offline,
            float(timing.get("online_s", latency - offline)), int(timing.get("dealer_bytes", 0))))
        self.stats.privacy = self.client.privacy()
        return logits[0] if single else logits

    def _peer_reason(self, wait: float = 2.0) -> PeerError | None:
        """The ERROR frame the peer sent before closing, if one is pending (read within `wait` seconds)."""
        try:
            self.channel.timeout = wait
            self.channel.expect(FrameType.BYE)
        except PeerError as e:
            return e
        except Exception:
            return None
        return None

    def predict(self, x) -> np.ndarray:
        return np.argmax(self.infer(x), axis=-1)

    def close(self, send_bye: bool = True) -> None:
        if not self.channel.closed:
            if send_bye:
                try:
                    self.channel.send_frame(FrameType.BYE)
                except PrivinferError:
                    pass
            self.channel.close()
            if getattr(self, "client", None) is not None:
                self.client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def connect(host: str, port: int, protocol: str = "plain", *, timeout: float = DEFAULT_TIMEOUT,
            progress: bool = False, warn: bool = True,
            **client_options) -> RemoteSession:
    """Connect to a running server and set up a session (keys, offline phase)."""
    if protocol != "auto":  # with "auto" the server's WELCOME names the protocol
        get_protocol(protocol).validate_client_options(client_options)  # fail before opening a socket
    return RemoteSession(tcp_connect(host, port, timeout=timeout), protocol,
                         progress=progress, warn=warn, **client_options)


def _server_process(graph_bytes: bytes, protocol: str, options: dict, kw: dict, conn) -> None:
    """Child process body: build the Server, report its port (or the error), serve until killed."""
    import logging
    logging.basicConfig(level=logging.WARNING)
    from ._process import exit_with_parent
    from .server import Server
    exit_with_parent()
    try:
        srv = Server(load_graph(graph_bytes), protocol, "127.0.0.1", 0, **kw, **options)
    except BaseException as e:  # report set-up errors (unsupported layer, bad option) to the parent
        conn.send(("error", type(e).__name__, str(e)))
        return
    conn.send(("ok", srv.port))
    conn.close()
    srv.serve_forever()


class PrivateSession(RemoteSession):
    """Wrap a model in a private inference session with one call.

    The server runs in its own process (``spawn="process"``, the default) or in a thread of this
    process (``spawn="thread"``); either way client and server talk over a loopback TCP channel.
    ``warn=False`` also silences the server's start-up warning (`Protocol.privacy_warning`). The server takes one
    session, this one: no other local process can open a second while it lasts (its options, e.g. `he` batch
    packing, are this session's own choices, `Protocol.local_session_defaults`).
    """

    def __init__(self, model: Any, protocol: str = "plain", *, spawn: str = "process",
                 timeout: float = DEFAULT_TIMEOUT, input_shape=None, input_range=None, progress: bool = False,
                 warn: bool = True, **options):
        if spawn not in ("process", "thread"):
            raise PrivinferError(f"spawn must be 'process' or 'thread', got {spawn!r}")
        graph = compile_model(model, input_shape, input_range)
        self.plan = None
        if protocol == "auto":  # the planner picks a concrete protocol and its options (privinfer.planner.auto)
            from .planner.auto import resolve_auto
            protocol, options, self.plan = resolve_auto(graph, options)
        protocol, options = resolve_protocol(protocol, options)
        cls = get_protocol(protocol)
        server_opts, client_opts = split_options(cls, options)
        server_opts = {**cls.local_session_defaults, **server_opts}
        if progress and "progress" in cls.server_options:  # the server's preparation steps (he)
            server_opts.setdefault("progress", True)
        cls.check_graph(graph)
        self._proc = self._server = None
        with step(f"{protocol}: preparing the server (parameters, weights)", progress):
            # one session, this one; the start-up warning goes where the client's warnings go
            server_kw = {"timeout": timeout, "warn": warn, "max_sessions": 1}
            if spawn == "thread":
                from .server import Server
                # torch_threads=None: a thread-mode server must not change this process's torch settings
                self._server = Server(graph, protocol, torch_threads=None, **server_kw, **server_opts).start()
                port = self._server.port
            else:
                port = self._start_process(graph, protocol, server_opts, server_kw, timeout)
        try:
            super().__init__(tcp_connect("127.0.0.1", port, timeout=timeout), protocol, progress=progress,
                             warn=warn, **client_opts)
        except BaseException:
            self._stop_server()
            raise

    def _start_process(self, graph: Graph, protocol: str, server_opts: dict, server_kw: dict, timeout: float) -> int:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(target=_server_process, daemon=False, name=f"privinfer-server-{protocol}",
                                 args=(graph_to_bytes(graph), protocol, server_opts, server_kw, child))
        with no_main_reimport():  # no `if __name__ == "__main__":` guard needed in the caller's script
            self._proc.start()
        atexit.register(self._stop_server)
        child.close()
        deadline = time.monotonic() + max(timeout, 600.0)
        while not parent.poll(0.2):  # never wait on a child that has died
            if not self._proc.is_alive() or time.monotonic() > deadline:
                code = self._proc.exitcode
                self._stop_server()
                raise PrivinferError("the server process did not start in time" if code is None
                                     else f"the server process died at start (exit code {code})")
        try:
            msg = parent.recv()
        except EOFError:
            code = self._proc.exitcode
            self._stop_server()
            raise PrivinferError(f"the server process died at start (exit code {code})") from None
        finally:
            parent.close()
        if msg[0] != "ok":
            self._stop_server()
            raise PrivinferError(f"server failed to start: {msg[1]}: {msg[2]}")
        return int(msg[1])

    def _stop_server(self) -> None:
        atexit.unregister(self._stop_server)  # the atexit entry must not keep a closed session alive
        if self._proc is not None:
            self._proc.terminate()
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
            self._proc = None
        if self._server is not None:
            self._server.shutdown()
            self._server = None

    def close(self, send_bye: bool = True) -> None:
        super().close(send_bye)
        self._stop_server()

    def __del__(self):
        try:
            self._stop_server()
        except Exception:
            pass
