"""The wire codec: round-trips (hypothesis) and typed errors on malformed input."""
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from privinfer.errors import ProtocolError
from privinfer.transport import frames
from privinfer.transport.frames import FrameType

DTYPES = st.sampled_from([np.float32, np.float64, np.int64, np.int32, np.uint8, np.uint64])


@given(hnp.arrays(DTYPES, hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=6)))
def test_tensor_round_trip(arr):
    out = frames.decode_tensor(frames.encode_tensor(arr))
    assert out.dtype == arr.dtype.newbyteorder("<") and out.shape == arr.shape
    np.testing.assert_array_equal(out, arr)


@given(st.lists(st.binary(max_size=64), max_size=20))
def test_blobs_round_trip(blobs):
    assert frames.decode_blobs(frames.encode_blobs(blobs)) == blobs


@given(st.dictionaries(st.text(max_size=8), st.one_of(st.integers(), st.text(max_size=8), st.booleans()), max_size=8))
def test_json_round_trip(obj):
    assert frames.decode_json(frames.encode_json(obj)) == obj


@given(st.binary(max_size=200))
def test_decoders_never_crash_on_garbage(data):
    for decode in (frames.decode_tensor, frames.decode_blobs, frames.decode_json):
        try:
            decode(data)
        except ProtocolError:
            pass


@given(st.binary(min_size=12, max_size=12))
def test_header_garbage_is_typed(raw):
    try:
        ftype, length = frames.decode_header(raw, max_frame=1 << 20)
    except ProtocolError:
        return
    assert raw[:2] == frames.MAGIC and isinstance(ftype, FrameType) and length <= 1 << 20


def test_header_checks():
    with pytest.raises(ProtocolError, match="magic"):
        frames.decode_header(b"XX" + bytes(10), 100)
    with pytest.raises(ProtocolError, match="version"):
        frames.decode_header(struct.pack(">2sBBQ", b"PV", 99, 1, 0), 100)
    with pytest.raises(ProtocolError, match="frame type"):
        frames.decode_header(struct.pack(">2sBBQ", b"PV", 1, 200, 0), 100)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        frames.decode_header(frames.encode_header(FrameType.TENSOR, 101), 100)


def test_tensor_size_mismatch_and_dtype():
    data = frames.encode_tensor(np.zeros((2, 3), np.float32))
    with pytest.raises(ProtocolError, match="needs"):
        frames.decode_tensor(data[:-1])
    with pytest.raises(ProtocolError, match="dtype"):
        frames.encode_tensor(np.zeros(2, dtype=np.complex64))
    with pytest.raises(ProtocolError, match="object"):
        frames.decode_json(b"[1, 2]")
