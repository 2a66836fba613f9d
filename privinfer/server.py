"""The serving side: one model, one protocol, each client in its own thread; survives any client."""
from __future__ import annotations

import logging
import socket
import sys
import threading
import time
from typing import Any

from .errors import PrivinferError, ProtocolError, ResourceLimitError
from .model import compile_model
from .model.ir import Graph
from .protocols.base import get_protocol, resolve_protocol, split_options
from .transport import Channel, DEFAULT_TIMEOUT, FrameType
from .transport.tcp import ThreadedListener
from .transport.frames import DEFAULT_MAX_FRAME, decode_json

log = logging.getLogger("privinfer.server")
DEFAULT_MAX_SESSIONS = 16
DEFAULT_MAX_BATCH = 8192


class Server(ThreadedListener):
    """Serve `model` under `protocol` on host:port. Limits are enforced with typed errors."""
    thread_prefix = "privinfer-client"

    def __init__(self, model: Any, protocol: str = "plain", host: str = "127.0.0.1", port: int = 0, *,
                 timeout: float = DEFAULT_TIMEOUT, max_sessions: int = DEFAULT_MAX_SESSIONS,
                 max_batch: int = DEFAULT_MAX_BATCH, max_frame: int = DEFAULT_MAX_FRAME,
                 torch_threads: int | None = 1, input_shape=None, input_range=None, warn: bool = True,
                 **options):
        if torch_threads:  # clients run in parallel threads; intra-op threads on tiny tensors only spin
            import torch
            torch.set_num_threads(torch_threads)
        self.graph: Graph = compile_model(model, input_shape, input_range)
        self.plan = None
        if protocol == "auto":  # the planner picks a concrete protocol; clients may still say "auto"
            from .planner.auto import resolve_auto
            protocol, options, self.plan = resolve_auto(self.graph, options)
        protocol, options = resolve_protocol(protocol, options)
        self.protocol_cls = get_protocol(protocol)
        server_opts, _ = split_options(self.protocol_cls, options)
        self.protocol = self.protocol_cls(self.graph, **server_opts)
        said = self.protocol.privacy_warning if warn else None  # options that buy less privacy than they cost
        if said:
            print(f"privinfer: warning: {said}", file=sys.stderr, flush=True)
        self.timeout, self.max_batch, self.max_frame = timeout, max_batch, max_frame
        self._slots = threading.BoundedSemaphore(max_sessions)
        self.max_sessions = max_sessions
        super().__init__(host, port)
        self.served = 0
        self.failed = 0

    # --- one client -----------------------------------------------------------------------------
    def _handle(self, conn: socket.socket, addr) -> None:
        ch = Channel(conn, timeout=self.timeout, max_frame=self.max_frame, peer=f"client {addr[0]}:{addr[1]}")
        if not self._slots.acquire(blocking=False):
            ch.send_error(ResourceLimitError(f"server busy: {self.max_sessions} sessions already open"))
            _linger_close(ch)
            return
        sides: list = []  # filled as soon as the ServerSide exists, so close() runs even if setup fails
        t0, queries, outcome = time.monotonic(), 0, "ok"
        log.info("session from %s: opened (protocol %s)", ch.peer, self.protocol_cls.name)
        try:
            side = self._handshake(ch, sides)
            while True:
                ftype, payload = ch.expect(FrameType.QUERY, FrameType.BYE)
                if ftype == FrameType.BYE:
                    break
                meta = decode_json(payload)
                batch = meta.get("batch")
                if not isinstance(batch, int) or not 1 <= batch <= self.max_batch:
                    raise ResourceLimitError(f"batch must be an integer in 1..{self.max_batch}, got {batch!r}")
                side.query(ch, meta)
                self.served += 1
                queries += 1
        except PrivinferError as e:
            self.failed += 1
            outcome = f"{type(e).__name__}: {e}"
            if not (isinstance(e, ProtocolError) and "closed the connection" in str(e)):
                ch.send_error(e)
        except Exception as e:  # a bug or a library error on hostile input: report, keep serving
            self.failed += 1
            outcome = f"internal error {type(e).__name__}"
            log.exception("client %s: internal error", ch.peer)
            ch.send_error(ProtocolError(f"server could not process the request ({type(e).__name__}: {e})"))
        finally:
            for side in sides:
                try:
                    side.close()
                except Exception:
                    log.exception("closing session")
            log.info("session from %s: closed after %.1f s, %d queries, %d B in, %d B out; %s", ch.peer,
                     time.monotonic() - t0, queries, ch.stats.bytes_received, ch.stats.bytes_sent, outcome)
            _linger_close(ch)
            self._slots.release()

    def _handshake(self, ch: Channel, sides: list):
        hello = ch.recv_json(FrameType.HELLO)
        name = hello.get("protocol")
        if name not in (self.protocol_cls.name, "auto"):
            raise ProtocolError(f"this server runs protocol {self.protocol_cls.name!r}, client asked for {name!r}")
        opts = hello.get("options", {})
        if not isinstance(opts, dict):
            raise ProtocolError("HELLO options must be an object")
        client_opts = self.protocol_cls.validate_client_options(opts)
        side = self.protocol.server_side(client_opts)
        sides.append(side)
        ch.send_json({"protocol": self.protocol_cls.name, "graph": self.protocol.graph.spec(), "info": side.welcome(),
                      "limits": {"max_batch": self.max_batch, "max_frame": self.max_frame,
                                 "timeout": self.timeout}}, FrameType.WELCOME)
        side.setup(ch)
        return side


def _linger_close(ch: Channel, seconds: float = 0.5, limit: int = 1 << 20) -> None:
    """Close so that a pending ERROR frame reaches the peer: half-close, drain briefly, then close.

    Closing with unread input makes the kernel send RST, which can discard our last frame. The drain has
    one total deadline, so a trickling peer cannot hold its session slot.
    """
    end = time.monotonic() + seconds
    try:
        ch.sock.shutdown(socket.SHUT_WR)
        drained = 0
        while drained < limit and time.monotonic() < end:
            ch.sock.settimeout(max(0.01, end - time.monotonic()))
            chunk = ch.sock.recv(65536)
            if not chunk:
                break
            drained += len(chunk)
    except OSError:
        pass
    ch.close()


def serve(model: Any, protocol: str = "plain", host: str = "127.0.0.1", port: int = 0, **kw) -> Server:
    """Start serving in the background and return the Server (its `.port` tells where)."""
    return Server(model, protocol, host, port, **kw).start()
