"""Framing on the pipes between privinfer and its SPU party processes (used on BOTH sides).

Why a file of its own with no privinfer imports: the party runs under a separate interpreter (the SPU venv,
which pins numpy/jax versions the main venv cannot take), so it cannot import the `privinfer` package (that
pulls torch in). It imports this module as a sibling file; the parent imports it as part of the package.

A message is a JSON header followed by `_n` raw payloads, each a 4-byte big-endian length and its bytes.
Nothing is unpickled. Frames above `MAX_FRAME` are refused.
"""
from __future__ import annotations

import json
import os
import select
import struct
import time

MAX_FRAME = 1 << 30


class PipeClosed(EOFError):
    """The other end closed the pipe."""


class PipeTimeout(TimeoutError):
    """No complete frame before the deadline."""


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def write_msg(fd: int, header: dict, *payloads: bytes) -> None:
    parts = [json.dumps({**header, "_n": len(payloads)}).encode(), *payloads]
    _write_all(fd, b"".join(struct.pack(">I", len(p)) + bytes(p) for p in parts))


def _read_exact(fd: int, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise PipeTimeout(f"no data within the deadline ({len(buf)}/{n} bytes read)")
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise PipeClosed("pipe closed")
        buf += chunk
    return bytes(buf)


def _read_frame(fd: int, deadline: float | None) -> bytes:
    (n,) = struct.unpack(">I", _read_exact(fd, 4, deadline))
    if n > MAX_FRAME:
        raise ValueError(f"pipe frame of {n} bytes exceeds {MAX_FRAME}")
    return _read_exact(fd, n, deadline)


def read_msg(fd: int, timeout: float | None = None) -> tuple[dict, list[bytes]]:
    deadline = None if timeout is None else time.monotonic() + timeout
    header = json.loads(_read_frame(fd, deadline).decode())
    if not isinstance(header, dict):
        raise ValueError("pipe header is not a JSON object")
    n = int(header.pop("_n", 0))
    if not 0 <= n <= 64:
        raise ValueError(f"pipe message announces {n} payloads")
    return header, [_read_frame(fd, deadline) for _ in range(n)]
