"""A Channel sends and receives typed frames over a stream socket and counts what crosses it.

The same class serves TCP connections and in-process socket pairs, so tests exercise the real codec.
Counting: bytes and messages each way (headers included), and rounds = the number of times this side
starts sending after having received (the first send counts as round 1).
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass, asdict

import numpy as np

from ..errors import PeerError, PeerOptionRefusedError, PeerResourceLimitError, ProtocolError, TimeoutError_
from . import frames
from .frames import FrameType

#: error types a peer reports that this side raises as typed subclasses of PeerError (others: PeerError)
_PEER_ERRORS = {"ResourceLimitError": PeerResourceLimitError, "OptionRefusedError": PeerOptionRefusedError}

DEFAULT_TIMEOUT = 120.0
_BULK = (FrameType.TENSOR, FrameType.BYTES, FrameType.BLOBS)


@dataclass
class ChannelStats:
    bytes_sent: int = 0
    bytes_received: int = 0
    messages_sent: int = 0
    messages_received: int = 0
    rounds: int = 0

    def copy(self) -> "ChannelStats":
        return ChannelStats(**asdict(self))

    def __sub__(self, other: "ChannelStats") -> "ChannelStats":
        return ChannelStats(**{k: v - getattr(other, k) for k, v in asdict(self).items()})

    def as_dict(self) -> dict:
        return asdict(self)


class Channel:
    """Typed frames over a connected socket, with a size limit and a read timeout."""

    def __init__(self, sock: socket.socket, *, timeout: float = DEFAULT_TIMEOUT,
                 max_frame: int = frames.DEFAULT_MAX_FRAME, peer: str = "peer"):
        self.sock = sock
        self.timeout = timeout
        self.max_frame = max_frame
        self.peer = peer
        self.stats = ChannelStats()
        self._last_was_recv = True
        self.closed = False
        sock.settimeout(timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass  # not a TCP socket (socketpair)

    # --- raw frames ---------------------------------------------------------------------------
    def send_frame(self, ftype: FrameType, payload: bytes = b"") -> None:
        if len(payload) > self.max_frame:
            raise ProtocolError(f"refusing to send a frame of {len(payload)} bytes (limit {self.max_frame})")
        header = frames.encode_header(ftype, len(payload))
        try:
            self.sock.sendall(header)
            if payload:
                self.sock.sendall(payload)
        except socket.timeout:
            raise TimeoutError_(f"sending to {self.peer} timed out after {self.timeout:.0f} s") from None
        except OSError as e:
            raise ProtocolError(f"connection to {self.peer} lost while sending: {e}") from None
        if self._last_was_recv:
            self.stats.rounds += 1
            self._last_was_recv = False
        self.stats.bytes_sent += len(header) + len(payload)
        self.stats.messages_sent += 1

    def _recv_exact(self, n: int, what: str) -> bytes:
        """Read exactly n bytes before one deadline; memory grows only as data arrives."""
        buf = bytearray()
        deadline = time.monotonic() + self.timeout
        try:
            while len(buf) < n:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout
                self.sock.settimeout(left)
                chunk = self.sock.recv(min(n - len(buf), 1 << 22))
                if not chunk:
                    if not buf and what == "header":
                        raise ProtocolError(f"{self.peer} closed the connection")
                    raise ProtocolError(f"{self.peer} closed the connection mid-{what} ({len(buf)} of {n} bytes)")
                buf += chunk
        except socket.timeout:
            raise TimeoutError_(f"reading {what} from {self.peer} timed out after {self.timeout:.0f} s") from None
        except OSError as e:
            raise ProtocolError(f"connection to {self.peer} lost while reading {what}: {e}") from None
        return bytes(buf)

    def recv_frame(self, max_len: int | None = None) -> tuple[FrameType, bytes]:
        """One frame; `max_len` (if given) caps the payload below `max_frame` before anything is read."""
        ftype, length = frames.decode_header(self._recv_exact(frames.HEADER.size, "header"), self.max_frame)
        if max_len is not None and length > max_len:
            raise ProtocolError(f"{ftype.name} frame of {length} bytes exceeds its limit of {max_len} bytes")
        payload = self._recv_exact(length, "frame") if length else b""
        self.stats.bytes_received += frames.HEADER.size + length
        self.stats.messages_received += 1
        self._last_was_recv = True
        return ftype, payload

    def expect(self, *types: FrameType) -> tuple[FrameType, bytes]:
        """Receive one frame of one of `types`; an ERROR frame from the peer raises PeerError."""
        # control frames are small: a peer cannot make us allocate max_frame bytes for a HELLO or a BYE
        cap = None if any(t in _BULK for t in types) else frames.MAX_JSON
        ftype, payload = self.recv_frame(cap)
        if ftype not in types and ftype != FrameType.ERROR:
            raise ProtocolError(f"expected {'/'.join(t.name for t in types)} from {self.peer}, got {ftype.name}")
        if ftype == FrameType.ERROR and FrameType.ERROR not in types:
            info = frames.decode_json(payload)
            cls = _PEER_ERRORS.get(info.get("type"), PeerError)
            raise cls(f"{self.peer} reported {info.get('type', 'error')}: {info.get('message', '')}")
        if ftype not in types:
            raise ProtocolError(f"expected {'/'.join(t.name for t in types)} from {self.peer}, got {ftype.name}")
        return ftype, payload

    # --- typed helpers ------------------------------------------------------------------------
    def send_json(self, obj: dict, ftype: FrameType = FrameType.JSON) -> None:
        self.send_frame(ftype, frames.encode_json(obj))

    def recv_json(self, ftype: FrameType = FrameType.JSON) -> dict:
        return frames.decode_json(self.expect(ftype)[1])

    def send_tensor(self, arr: np.ndarray) -> None:
        self.send_frame(FrameType.TENSOR, frames.encode_tensor(arr))

    def recv_tensor(self) -> np.ndarray:
        return frames.decode_tensor(self.expect(FrameType.TENSOR)[1])

    def send_bytes(self, data: bytes) -> None:
        self.send_frame(FrameType.BYTES, bytes(data))

    def recv_bytes(self) -> bytes:
        return self.expect(FrameType.BYTES)[1]

    def send_blobs(self, blobs) -> None:
        self.send_frame(FrameType.BLOBS, frames.encode_blobs(blobs))

    def recv_blobs(self) -> list[bytes]:
        return frames.decode_blobs(self.expect(FrameType.BLOBS)[1])

    def send_error(self, exc: BaseException) -> None:
        """Best effort: tell the peer why we are closing; never raises."""
        try:
            msg = str(exc)[:2000]
            self.send_frame(FrameType.ERROR, frames.encode_json({"type": type(exc).__name__, "message": msg}))
        except Exception:
            pass

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self.sock.close()
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
