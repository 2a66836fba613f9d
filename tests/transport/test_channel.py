"""Channel counting, limits and timeouts over a real socket pair."""
import threading

import numpy as np
import pytest

from privinfer.errors import PeerError, ProtocolError, TimeoutError_
from privinfer.transport import FrameType, channel_pair
from privinfer.transport.frames import HEADER


def test_counts_bytes_messages_rounds():
    a, b = channel_pair(timeout=5)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    a.send_tensor(x)
    np.testing.assert_array_equal(b.recv_tensor(), x)
    b.send_json({"ok": 1})
    assert a.recv_json() == {"ok": 1}
    a.send_bytes(b"abc")
    assert b.recv_bytes() == b"abc"
    assert a.stats.bytes_sent == b.stats.bytes_received == 2 * HEADER.size + 2 + 8 + 48 + 3
    assert a.stats.messages_sent == 2 and a.stats.messages_received == 1
    assert a.stats.rounds == 2 and b.stats.rounds == 1


def test_oversize_frame_refused_both_ways():
    a, b = channel_pair(timeout=5, max_frame=100)
    with pytest.raises(ProtocolError, match="refusing"):
        a.send_bytes(b"x" * 101)
    a.max_frame = 1000
    a.send_bytes(b"x" * 101)
    with pytest.raises(ProtocolError, match="exceeds the limit"):
        b.recv_bytes()


def test_timeout_and_peer_close():
    a, b = channel_pair(timeout=0.2)
    with pytest.raises(TimeoutError_):
        b.recv_frame()
    a.sock.sendall(HEADER.pack(b"PV", 1, int(FrameType.BYTES), 10) + b"abc")
    a.close()
    with pytest.raises(ProtocolError, match="mid-frame"):
        b.recv_frame()


def test_error_frame_becomes_peer_error_and_wrong_type_is_typed():
    a, b = channel_pair(timeout=5)
    a.send_error(ValueError("boom"))
    with pytest.raises(PeerError, match="boom"):
        b.recv_tensor()
    a.send_bytes(b"1")
    with pytest.raises(ProtocolError, match="expected TENSOR"):
        b.recv_tensor()


def test_large_frame_streams():
    a, b = channel_pair(timeout=10)
    big = np.random.default_rng(0).random(3_000_000)
    t = threading.Thread(target=a.send_tensor, args=(big,))
    t.start()
    np.testing.assert_array_equal(b.recv_tensor(), big)
    t.join()
