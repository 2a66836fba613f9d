"""An in-process channel pair over a socket pair: the real codec and counters, no TCP port."""
from __future__ import annotations

import socket

from .channel import DEFAULT_TIMEOUT, Channel
from . import frames


def channel_pair(*, timeout: float = DEFAULT_TIMEOUT,
                 max_frame: int = frames.DEFAULT_MAX_FRAME) -> tuple[Channel, Channel]:
    """(client_end, server_end), connected to each other."""
    a, b = socket.socketpair()
    return (Channel(a, timeout=timeout, max_frame=max_frame, peer="server"),
            Channel(b, timeout=timeout, max_frame=max_frame, peer="client"))
