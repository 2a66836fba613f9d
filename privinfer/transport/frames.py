"""The wire format: a fixed 12-byte header and a raw payload. Nothing here ever unpickles.

Header: magic b"PV" | version u8 | frame type u8 | payload length u64 (big endian).
Payload codecs: JSON objects (UTF-8), tensors (dtype code, ndim, dims, raw little-endian data) and blob
lists (count, lengths, bytes) for serialized ciphertexts. Every decoder validates sizes before it trusts them.
"""
from __future__ import annotations

import enum
import json
import math
import struct

import numpy as np

from ..errors import ProtocolError

MAGIC = b"PV"
VERSION = 1
HEADER = struct.Struct(">2sBBQ")
DEFAULT_MAX_FRAME = 1 << 30  # 1 GiB: batch-packed HE inputs are large; configurable per channel
MAX_JSON = 1 << 20


class FrameType(enum.IntEnum):
    HELLO = 1     # client -> server: protocol name and client options (JSON)
    WELCOME = 2   # server -> client: public architecture and protocol parameters (JSON)
    QUERY = 3     # client -> server: a query starts (JSON: batch size, ...)
    BYE = 4       # either side: orderly close
    ERROR = 5     # either side: typed error (JSON: type, message); the connection then closes
    JSON = 6      # protocol message
    TENSOR = 7    # one numpy array
    BYTES = 8     # one opaque byte string (e.g. a serialized context)
    BLOBS = 9     # a list of byte strings (e.g. ciphertexts)


def encode_header(ftype: int, length: int) -> bytes:
    return HEADER.pack(MAGIC, VERSION, int(ftype), int(length))


def decode_header(raw: bytes, max_frame: int) -> tuple[FrameType, int]:
    if len(raw) != HEADER.size:
        raise ProtocolError(f"truncated header ({len(raw)} of {HEADER.size} bytes)")
    magic, version, ftype, length = HEADER.unpack(raw)
    if magic != MAGIC:
        raise ProtocolError(f"bad magic {magic!r}: not a privinfer peer")
    if version != VERSION:
        raise ProtocolError(f"unsupported wire version {version} (this build speaks {VERSION})")
    try:
        ftype = FrameType(ftype)
    except ValueError:
        raise ProtocolError(f"unknown frame type {ftype}") from None
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {max_frame} bytes")
    return ftype, length


# --- JSON -----------------------------------------------------------------------------------------
def encode_json(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()


def _no_constant(name: str):
    raise ValueError(f"{name} is not allowed")


def decode_json(payload: bytes) -> dict:
    if len(payload) > MAX_JSON:
        raise ProtocolError(f"JSON frame of {len(payload)} bytes exceeds {MAX_JSON}")
    try:
        obj = json.loads(bytes(payload).decode("utf-8"), parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:  # ValueError covers JSONDecodeError, bad UTF-8, huge ints
        raise ProtocolError(f"malformed JSON frame: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError(f"JSON frame must hold an object, got {type(obj).__name__}")
    return obj


# --- tensors --------------------------------------------------------------------------------------
_DTYPES = {1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i8"), 4: np.dtype("<i4"),
           5: np.dtype("u1"), 6: np.dtype("<u8")}
_CODES = {v: k for k, v in _DTYPES.items()}
MAX_NDIM = 8


def encode_tensor(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr)
    dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder not in ("<", "|", "=") else arr.dtype
    code = _CODES.get(np.dtype(dt.str.replace("=", "<")))
    if code is None:
        raise ProtocolError(f"dtype {arr.dtype} cannot be sent; allowed: {[str(d) for d in _DTYPES.values()]}")
    if arr.ndim > MAX_NDIM:
        raise ProtocolError(f"tensor of {arr.ndim} dimensions exceeds {MAX_NDIM}")
    head = struct.pack(f">BB{arr.ndim}I", code, arr.ndim, *arr.shape)
    return head + np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes()


def decode_tensor(payload: bytes) -> np.ndarray:
    if len(payload) < 2:
        raise ProtocolError("truncated tensor frame")
    code, ndim = payload[0], payload[1]
    if code not in _DTYPES:
        raise ProtocolError(f"unknown tensor dtype code {code}")
    if ndim > MAX_NDIM:
        raise ProtocolError(f"tensor of {ndim} dimensions exceeds {MAX_NDIM}")
    end = 2 + 4 * ndim
    if len(payload) < end:
        raise ProtocolError("truncated tensor shape")
    shape = struct.unpack(f">{ndim}I", payload[2:end])
    dtype = _DTYPES[code]
    expected = math.prod(shape) * dtype.itemsize  # Python ints: no overflow
    if len(payload) - end != expected:
        raise ProtocolError(f"tensor payload holds {len(payload) - end} bytes, shape {shape} needs {expected}")
    return np.frombuffer(payload, dtype=dtype, offset=end).reshape(shape).copy()


# --- blob lists -----------------------------------------------------------------------------------
MAX_BLOBS = 1 << 20


def encode_blobs(blobs) -> bytes:
    blobs = [bytes(b) for b in blobs]
    return b"".join([struct.pack(">I", len(blobs)), struct.pack(f">{len(blobs)}Q", *map(len, blobs)), *blobs])


def decode_blobs(payload: bytes) -> list[bytes]:
    if len(payload) < 4:
        raise ProtocolError("truncated blob list")
    (count,) = struct.unpack(">I", payload[:4])
    if count > MAX_BLOBS:
        raise ProtocolError(f"blob list of {count} items exceeds {MAX_BLOBS}")
    end = 4 + 8 * count
    if len(payload) < end:
        raise ProtocolError("truncated blob lengths")
    lengths = struct.unpack(f">{count}Q", payload[4:end])
    if end + sum(lengths) != len(payload):
        raise ProtocolError(f"blob lengths add to {sum(lengths)}, payload holds {len(payload) - end}")
    out, pos = [], end
    view = memoryview(payload)
    for n in lengths:
        out.append(bytes(view[pos:pos + n]))
        pos += n
    return out
