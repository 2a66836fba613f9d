"""Protocol `cheetah` (SPU CHEETAH, two parties, no dealer): correctness against the reference executor,
the privacy record, bad clients, and an eavesdropper on the SPU link looking for the input and the weights.

One server and one session serve the whole module (CHEETAH's one-time set-up costs ~10 s under load).
Without the SPU venv these tests skip, unless PRIVINFER_REQUIRE_SPU=1 (as `make test` sets): then they fail.
"""
import os
import socket
import subprocess
import threading

import numpy as np
import pytest

import privinfer
from privinfer.errors import PeerError, PrivinferError, ProtocolError
from privinfer.model.ir import AvgPool2d, Conv2d, Flatten, Graph, Linear, MaxPool2d, Poly, ReLU
from privinfer.transport import connect as tcp_connect
from privinfer.transport.frames import FrameType


def _spu_python():
    from privinfer.protocols.cheetah.spawn import spu_python
    try:
        return spu_python()
    except PrivinferError as e:
        if os.environ.get("PRIVINFER_REQUIRE_SPU"):
            raise
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def graph():
    """Every IR layer kind, with one-sided conv padding and a padded average pool."""
    rng = np.random.default_rng(1)
    layers = [Conv2d(rng.normal(0, 0.5, (4, 1, 3, 3)), rng.normal(0, 0.1, 4), (1, 1), (1, 0, 0, 1)),
              ReLU(), MaxPool2d((2, 2), (2, 2)), AvgPool2d((2, 2), (1, 1), (1, 1)),
              Poly((0.1, 0.5, 0.25)), Flatten(), Linear(rng.normal(0, 0.3, (6, 4 * 4 * 4)), rng.normal(0, 0.1, 6))]
    return Graph((1, 8, 8), layers)


@pytest.fixture(scope="module")
def server(graph):
    _spu_python()
    with privinfer.Server(graph, "cheetah", timeout=120, mpc_timeout=30.0) as srv:
        yield srv


@pytest.fixture(scope="module")
def taps():
    """Every SPU link address exchanged during the module's session is replaced by a recording relay."""
    import privinfer.protocols.cheetah as ch_mod
    relays, real = [], ch_mod._peer_link

    def tapped(msg, expect_host, who):
        host, port = real(msg, expect_host, who).rsplit(":", 1)
        relays.append(_Tap((host, int(port))))
        return f"127.0.0.1:{relays[-1].port}"

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ch_mod, "_peer_link", tapped)
        yield relays


@pytest.fixture(scope="module")
def session(server, taps):
    with privinfer.connect(server.host, server.port, "cheetah", timeout=120) as s:
        yield s


def _hostile(server, link):
    """A client that follows the protocol up to the SPU link address, then sends `link` (or hangs up)."""
    ch = tcp_connect(server.host, server.port, timeout=60)
    try:
        ch.send_json({"protocol": "cheetah", "options": {}}, FrameType.HELLO)
        ch.recv_json(FrameType.WELCOME)
        assert "spu_link" in ch.recv_json()
        if link is None:
            return None
        ch.send_json({"spu_link": link})
        with pytest.raises(PeerError) as e:
            ch.recv_json()
        return str(e.value)
    finally:
        ch.close()


def test_server_refuses_bad_links_and_survives(server):
    assert "own address" in _hostile(server, "10.1.2.3:5000")  # not the client's own IP: no SSRF
    assert "usable" in _hostile(server, "127.0.0.1:99999")
    assert "usable" in _hostile(server, "localhost:80")
    _hostile(server, None)  # hangs up before sending any address


def test_logits_match_reference(session, graph):
    x = np.random.default_rng(2).random((3, 1, 8, 8))
    out = session.infer(x)
    ref = privinfer.run_reference(graph, x)
    np.testing.assert_allclose(out, ref, atol=1e-2)
    assert (out.argmax(1) == ref.argmax(1)).all()
    one = session.infer(x[0])  # a second batch size: a second SPU executable on both sides
    np.testing.assert_allclose(one, ref[0], atol=1e-2)


def test_privacy_record_and_traffic(session):
    session.infer(np.zeros((1, 8, 8)))
    p, q = session.stats.privacy, session.stats.last
    assert p["guarantee"] == "cryptographic" and p["dealer"] == "none"
    assert "semi-honest" in p["threat_model"] and "no dealer" in p["threat_model"]
    assert q.bytes_dealer == 0
    # the SPU link's traffic is counted: far above the few hundred bytes of the privinfer channel
    assert q.bytes_client_to_server > 10_000 and q.bytes_server_to_client > 10_000
    assert session.stats.setup_bytes > 1_000_000  # CHEETAH's one-time set-up (OT seeds, HE keys)


class _Tap:
    """A TCP relay that records every byte, in each direction."""

    def __init__(self, target: tuple[str, int]):
        self.target, self.data = target, bytearray()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                a, _ = self.sock.accept()
            except OSError:
                return
            try:
                b = socket.create_connection(self.target)
            except OSError:  # the party behind us is not listening yet: brpc reconnects
                a.close()
                continue
            for s, d in ((a, b), (b, a)):
                threading.Thread(target=self._pump, args=(s, d), daemon=True).start()

    def _pump(self, src, dst):
        while True:
            try:
                chunk = src.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            self.data += chunk
            dst.sendall(chunk)


def _encodings(values: np.ndarray, fxp_bits: int):
    yield from (values.astype(t).tobytes() for t in ("<f4", "<f8", ">f4", ">f8"))
    fixed = np.round(values * 2.0 ** fxp_bits).astype(np.int64)
    yield from (fixed.astype(t).tobytes() for t in ("<i8", ">i8"))


def test_eavesdropper_on_the_spu_link_sees_neither_input_nor_weights(session, taps, graph):
    """Both directions of the SPU link went through recorders (fixture `taps`); no window of the input or the
    weights may appear in any float or fixed-point encoding."""
    x = np.random.default_rng(3).random((1, 8, 8)) + 0.5
    out = session.infer(x)
    np.testing.assert_allclose(out, privinfer.run_reference(graph, x[None])[0], atol=1e-2)
    wire = b"".join(bytes(t.data) for t in taps)
    assert len(taps) == 2 and len(wire) > 1_000_000
    bits = session.stats.privacy["fixed_point_bits"]
    secrets = {"input": x.reshape(-1)[:6], "conv weights": graph.layers[0].weight.reshape(-1)[:6],
               "linear weights": graph.layers[-1].weight.reshape(-1)[10:16]}
    for what, window in secrets.items():
        for enc in _encodings(window, bits):
            assert enc not in wire, what


def test_colocated_slots_carry_nothing_of_the_other_partys_value():
    """In colocated mode the non-owner's slot of a private value must not depend on the value."""
    code = ("import numpy as np, spu.api as api; from spu import libspu\n"
            "c = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.CHEETAH, field=libspu.FieldType.FM64,\n"
            "                         fxp_fraction_bits=18)\n"
            "c.experimental_enable_colocated_optimization = True\n"
            "io = api.Io(2, c)\n"
            "vis = libspu.Visibility.VIS_SECRET\n"
            "a, b = (io.make_shares(np.full((4, 4), v), vis, 1) for v in (0.0, 3.25))\n"
            "same = lambda s, t: s.meta == t.meta and list(s.share_chunks) == list(t.share_chunks)\n"
            "print(same(a[0], b[0]), same(a[1], b[1]))\n")
    out = subprocess.run([_spu_python(), "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-2:] == ["True", "False"], out.stdout + out.stderr


def test_welcome_options_are_checked():
    from privinfer.protocols import get_protocol
    cls = get_protocol("cheetah")
    g = Graph((4,), [Linear(np.ones((2, 4)), np.zeros(2))])
    with pytest.raises(ProtocolError):
        cls.client_side({"fxp_bits": 99}, g)
    with pytest.raises(PrivinferError):
        cls(g, fxp_bits=4)
    with pytest.raises(PrivinferError):
        cls(g, dealer="x")
