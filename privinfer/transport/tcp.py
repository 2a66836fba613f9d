"""TCP endpoints: a client connect and a listening socket, both yielding Channels."""
from __future__ import annotations

import socket

from ..errors import ProtocolError
from .channel import DEFAULT_TIMEOUT, Channel
from . import frames


def connect(host: str, port: int, *, timeout: float = DEFAULT_TIMEOUT,
            max_frame: int = frames.DEFAULT_MAX_FRAME, emulated_rtt: float = 0.0) -> Channel:
    """Open a Channel to a privinfer server."""
    try:
        sock = socket.create_connection((host, int(port)), timeout=min(timeout, 30.0))
    except OSError as e:
        raise ProtocolError(f"cannot connect to {host}:{port}: {e}") from None
    return Channel(sock, timeout=timeout, max_frame=max_frame, peer=f"server {host}:{port}",
                   emulated_rtt=emulated_rtt)


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
