"""TCP endpoints: a client connect and a listening socket, both yielding Channels."""
from __future__ import annotations

import socket
import time

from ..errors import ProtocolError
from .channel import DEFAULT_TIMEOUT, Channel
from . import frames


def connect(host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT,
            max_frame: int = frames.DEFAULT_MAX_FRAME) -> Channel:
    """Open a Channel to a privinfer server."""
    try:
        sock = socket.create_connection((host, int(port)), timeout=min(timeout, 30.0))
    except OSError as e:
        raise ProtocolError(f"cannot connect to {host}:{port}: {e}") from None
    return Channel(sock, timeout=timeout, max_frame=max_frame, peer=f"server {host}:{port}")


def listen(host: str = "127.0.0.1", port: int = 0, backlog: int = 64) -> socket.socket:
    """A bound, listening socket (port 0 picks a free port: read it with getsockname())."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
    except OSError as e:
        sock.close()
        raise ProtocolError(f"cannot listen on {host}:{port}: {e}") from None
    sock.listen(backlog)
    return sock


class ThreadedListener:
    """Accept loop shared by every privinfer service: one daemon thread per connection, and a
    0.5 s accept timeout so `shutdown()` is noticed. Subclasses implement `_handle(conn, addr)`.

    `port=None` opens no socket: the object only handles connections accepted elsewhere (a serving
    worker process, `privinfer.serving.workers`, gets them handed over by its supervisor)."""
    thread_prefix = "privinfer"

    def __init__(self, host: str, port: int | None):
        import threading
        self._stop = threading.Event()
        if port is None:
            self._sock, self.host, self.port = None, host, None
            return
        self._sock = listen(host, port)
        self._sock.settimeout(0.5)
        self.host, self.port = self._sock.getsockname()[:2]

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    def _handle(self, conn: socket.socket, addr) -> None:
        raise NotImplementedError

    def serve_forever(self) -> None:
        import threading
        if self._sock is None:
            raise ProtocolError("this listener has no socket (port=None): it only handles handed-over connections")
        while not self._stop.is_set():
            try:
                conn, addr = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:  # EMFILE, ECONNABORTED, ...: transient unless we are shutting down
                if self._stop.is_set():
                    break
                time.sleep(0.1)
                continue
            try:
                threading.Thread(target=self._handle, args=(conn, addr), daemon=True,
                                 name=f"{self.thread_prefix}-{addr[1]}").start()
            except RuntimeError:  # cannot start a thread: refuse this connection, keep serving
                conn.close()

    def start(self):
        """Serve in a background thread (tests, notebooks)."""
        import threading
        threading.Thread(target=self.serve_forever, daemon=True, name=f"{self.thread_prefix}-accept").start()
        return self

    def shutdown(self) -> None:
        self._stop.set()
        try:
            if self._sock is not None:
                self._sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.shutdown()
