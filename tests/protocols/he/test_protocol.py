"""The `he` protocol: logits vs the reference, parameters, key isolation, typed errors, server resilience."""
from __future__ import annotations

import importlib.util
import threading

import numpy as np
import pytest
import torch
from torch import nn

import privinfer
from privinfer.errors import (ParameterError, PeerError, PrivinferError, ProtocolError, ResourceLimitError,
                              ShapeError, UnsupportedLayerError)
from privinfer.model import compile_model, run_reference
from privinfer.model.torch_layers import PolyAct, Square
from privinfer.protocols.he import HE, CKKSContext
from privinfer.protocols.he.params import MAX_BITS_128, select_params
from privinfer.protocols.he.program import build_program
from privinfer.session import RemoteSession
from privinfer.transport import FrameType
from privinfer.transport import connect as tcp_connect

TOL = 1e-2  # fast mode (flood 2^-11); circuit-private mode is tested in test_he_privacy.py
FAST = {"circuit_privacy": "fast"}


def _seq(shape, *layers):
    torch.manual_seed(len(layers) * 7 + sum(shape))
    m = nn.Sequential(*layers)
    m.input_shape = shape
    return compile_model(m)


def conv_poly_graph():
    """Multi-channel conv with stride and padding, poly2, avgpool, linear, poly3, linear."""
    return _seq((2, 10, 10),
                nn.Conv2d(2, 3, 3, stride=2, padding=1), PolyAct([0.1, 0.5, 0.25]), nn.AvgPool2d(2),
                nn.Flatten(), nn.Linear(12, 9), PolyAct([0.0, 0.6, 0.1, 0.05]), nn.Linear(9, 4))


def two_conv_graph():
    """Two convolutions (the second one multi-channel, padded), one-sided padding folded from ZeroPad2d."""
    return _seq((1, 12, 12),
                nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 4, 5, stride=2), Square(),
                nn.Conv2d(4, 2, 3, stride=1, padding=1), Square(), nn.Flatten(), nn.Linear(50, 6))


def linear_chain_graph():
    return _seq((20,), nn.Linear(20, 16), Square(), nn.Linear(16, 8), PolyAct([0.2, 0.3, 0.1]), nn.Linear(8, 5))


def pool_first_graph():
    return _seq((1, 8, 8), nn.AvgPool2d(2), nn.Conv2d(1, 2, 3), Square(), nn.Flatten(), nn.Linear(8, 3))


GRAPHS = {"conv-poly": conv_poly_graph, "two-conv": two_conv_graph, "linear-chain": linear_chain_graph,
          "pool-first": pool_first_graph}


@pytest.fixture(scope="module")
def cryptonets_like():
    g = _seq((1, 28, 28), nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 5, 5, stride=2), Square(), nn.Flatten(),
             nn.Linear(845, 100), Square(), nn.Linear(100, 10))
    srv = privinfer.Server(g, "he", **FAST).start()
    yield g, srv
    srv.shutdown()


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_latency_logits_match_reference(name):
    g = GRAPHS[name]()
    x = np.random.default_rng(1).random((2, *g.input_shape))
    with privinfer.PrivateSession(g, "he", spawn="thread", **FAST) as s:
        got = s.infer(x)
        assert s.stats.last.rounds == 1
    ref = run_reference(g, x)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() <= TOL, (name, np.abs(got - ref).max())


def test_cryptonets_shape_argmax_and_limits(cryptonets_like):
    g, srv = cryptonets_like
    x = np.random.default_rng(2).random((2, 1, 28, 28))
    with privinfer.connect("127.0.0.1", srv.port, "he") as s:
        got = s.infer(x)
        assert s.stats.setup_bytes <= 20e6
        priv = s.stats.privacy
    ref = run_reference(g, x)
    assert np.abs(got - ref).max() <= TOL
    top2 = np.sort(ref, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.01  # argmax must agree wherever the margin exceeds the flood
    assert (got.argmax(1) == ref.argmax(1))[clear].all()
    assert priv["security_bits"] == 128 and priv["architecture_public"] and priv["flood_std"] > 0 \
        and priv["circuit_privacy"] == "fast" and priv["guarantee"] == "cryptographic-input-only"


# --- parameters --------------------------------------------------------------------------------
def _chain(depth: int):
    layers = []
    for _ in range(depth - 1):
        layers += [nn.Linear(8, 8), Square()]
    return _seq((8,), *layers, nn.Linear(8, 4))


@pytest.mark.parametrize("depth", [1, 2, 3, 5, 8])
def test_select_params_depths(depth):
    p = select_params(_chain(depth), "latency", value_bits=8)
    assert p.depth == depth
    assert len(p.coeff_mod_bit_sizes) == depth + 2  # q0, one prime per rescale, special
    assert p.total_bits <= MAX_BITS_128[p.N] and p.security_bits == 128
    assert p.slots == p.N // 2 and p.scale_bits >= 22
    margin = p.notes["special_margin_bits"]  # 0, or 10 when the plan rotates the fresh input
    assert max(p.coeff_mod_bit_sizes[:-1]) <= p.coeff_mod_bit_sizes[-1] - margin  # special prime dominates
    shallow = select_params(_chain(1), "latency", value_bits=8)
    assert p.N >= shallow.N


def test_select_params_grows_ring_with_depth_and_batch():
    assert select_params(_chain(2), "latency", value_bits=8).N <= 8192
    assert select_params(_chain(8), "latency", value_bits=8).N >= 16384
    with pytest.raises(ResourceLimitError):  # more images than the largest ring has slots
        select_params(_chain(2), "batch", batch=20000)


def test_too_deep_network_is_refused():
    with pytest.raises(ParameterError, match=r"depth 40.*at most depth \d+"):
        select_params(_chain(40), "latency", value_bits=8)


def test_relu_and_maxpool_are_refused_by_name():
    g = _seq((1, 8, 8), nn.Conv2d(1, 2, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(18, 2))
    with pytest.raises(UnsupportedLayerError, match=r"layer 1 \(relu\).*make_he_friendly"):
        HE.check_graph(g)
    with pytest.raises(UnsupportedLayerError, match="make_he_friendly"):
        privinfer.Server(g, "he")


def test_program_rewrites_polys_exactly():
    for make in GRAPHS.values():
        g = make()
        prog = build_program(g)
        x = np.random.default_rng(3).random((3, *g.input_shape))
        ref = run_reference(g, x)
        assert np.allclose(np.stack([prog.run(v) for v in x]), ref, atol=1e-9)


# --- keys, tampering, errors --------------------------------------------------------------------
class _Recorder:
    def __init__(self, ch):
        self.sent: list[bytes] = []
        orig = ch.send_frame

        def send(ftype, payload=b""):
            self.sent.append(bytes(payload))
            return orig(ftype, payload)
        ch.send_frame = send


def test_secret_key_never_leaves_the_client(cryptonets_like):
    g, srv = cryptonets_like
    ch = tcp_connect("127.0.0.1", srv.port)
    rec = _Recorder(ch)
    with RemoteSession(ch, "he") as s:
        s.infer(np.random.default_rng(4).random((1, 28, 28)))
        sk = s.client.ctx.secret_key_bytes()
        steps = s.client.steps
    traffic = b"".join(rec.sent)
    assert len(sk) > 1000 and sk not in traffic
    body = sk[64:]
    for i in range(0, len(body) - 64, max(1, len(body) // 16)):
        assert body[i:i + 64] not in traffic
    assert len(traffic) < 20e6  # only the plan's Galois keys (not the ~100 MB full set)
    assert all(s_ & (s_ - 1) == 0 for s_ in steps) and len(steps) <= 12


def _raw_session(port):
    ch = tcp_connect("127.0.0.1", port)
    return RemoteSession(ch, "he")


def _query_raw(s, blobs, batch=1):
    s.channel.send_json({"batch": batch}, FrameType.QUERY)
    s.channel.send_blobs(blobs)
    return s.channel.recv_blobs()


def test_tampered_and_foreign_ciphertexts_give_typed_errors_and_server_survives(cryptonets_like):
    g, srv = cryptonets_like
    x = np.random.default_rng(5).random((1, 28, 28))
    cases = []
    # 1. tampered bytes
    s = _raw_session(srv.port)
    from privinfer.protocols.he.latency import client_vectors
    vecs = client_vectors(s.client.plan, x)
    good = [s.client.ctx.encrypt(v, 2.0 ** s.client.params.input_scale_bits) for v in vecs]
    bad = list(good)
    bad[0] = bad[0][:40] + bytes(b ^ 0x5A for b in bad[0][40:200]) + bad[0][200:]
    cases.append((s, bad, "ProtocolError"))
    # 2. ciphertext from another context (other parameters)
    s2 = _raw_session(srv.port)
    other = CKKSContext.create(select_params(_chain(1), "latency", value_bits=8))
    cases.append((s2, [other.encrypt(np.ones(8), 2.0 ** 25)] + good[1:], "ProtocolError"))
    # 3. wrong number of ciphertexts
    s3 = _raw_session(srv.port)
    cases.append((s3, good[:-1], "ShapeError"))
    # 4. truncated garbage
    s4 = _raw_session(srv.port)
    cases.append((s4, [b"\x00" * 10] * len(good), "ProtocolError"))
    for sess, blobs, kind in cases:
        with pytest.raises(PeerError, match=kind):
            _query_raw(sess, blobs)
        sess.close(send_bye=False)
    # 5. too-large batch
    s5 = _raw_session(srv.port)
    s5.channel.send_json({"batch": 65}, FrameType.QUERY)  # refused before any ciphertext is read
    with pytest.raises(PeerError, match="ResourceLimitError"):
        s5.channel.recv_blobs()
    s5.close(send_bye=False)
    # the server still answers a fresh client correctly
    with privinfer.connect("127.0.0.1", srv.port, "he") as ok:
        got = ok.infer(x)
    assert np.abs(got - run_reference(g, x[None])[0]).max() <= TOL


def test_client_checks_input_shape(cryptonets_like):
    _, srv = cryptonets_like
    with privinfer.connect("127.0.0.1", srv.port, "he") as s:
        with pytest.raises(ShapeError):
            s.infer(np.zeros((2, 27, 27)))


def test_unknown_packing_is_refused():
    with pytest.raises(PrivinferError, match="packing"):
        HE.validate_client_options({"packing": "fast"})


def test_batch_packing_integration(cryptonets_like):
    """packing="batch" goes through privinfer.protocols.he.batch (or fails clearly when it is absent)."""
    _, srv = cryptonets_like
    if importlib.util.find_spec("privinfer.protocols.he.batch") is None:
        with pytest.raises((PeerError, ParameterError), match="batch"):
            privinfer.connect("127.0.0.1", srv.port, "he", packing="batch")
        return
    g = linear_chain_graph()
    x = np.random.default_rng(7).random((3, *g.input_shape))
    with privinfer.PrivateSession(g, "he", spawn="thread", packing="batch", **FAST) as s:
        got = s.infer(x)
        assert s.stats.privacy["packing"] == "batch" and s.stats.privacy["galois_keys_sent"] == 0
        with pytest.raises(ResourceLimitError):  # more slot groups than a query may hold: refused before sending
            from privinfer.protocols.he.executor import MAX_GROUPS
            s.infer(np.zeros((s.client.params.slots * MAX_GROUPS + 1, *g.input_shape)))
    assert np.abs(got - run_reference(g, x)).max() <= TOL


def test_a_flood_mode_server_refuses_batch_packing_unless_its_operator_allows_it():
    """Batch replies claim the input only (a flood below the batch engine's evaluation error, no cap): a server
    whose flood mode protects its weights must not hand them to any client that asks for batch packing (review
    finding H1, session 10). Refused with a typed error unless allow_batch=True; fast mode serves it; one-machine
    sessions (the client is the operator) allow it by default."""
    g = linear_chain_graph()
    assert not HE(g).batch_allowed and HE(g, allow_batch=True).batch_allowed and HE(g, **FAST).batch_allowed
    # the start-up warning (`Server` prints it): only where flood mode falls short of its target
    assert HE(g).privacy_warning is None and HE(g, **FAST).privacy_warning is None
    assert "falls short of its 30-bit target" in HE(g, flood_std=2.0 ** -40).privacy_warning
    assert not HE(g, circuit_privacy="fast", allow_batch=False).batch_allowed
    for bad in ("yes", 1):
        with pytest.raises(ParameterError, match="allow_batch"):
            HE(g, allow_batch=bad)
    with pytest.raises(ParameterError, match="executor runs batch-packed queries"):  # dead configuration
        HE(g, executor="local")
    assert HE(g, executor="local", allow_batch=True).batch_allowed
    srv = privinfer.Server(g, "he").start()
    try:
        with pytest.raises(privinfer.OptionRefusedError, match="allow_batch=true.*latency"):
            privinfer.connect("127.0.0.1", srv.port, "he", packing="batch")
    finally:
        srv.shutdown()


@pytest.mark.slow
def test_batch_packing_served_where_allowed_end_to_end():
    """The other side of the refusal above, end to end: a flood-mode server serves latency queries as before,
    batch ones where its operator allowed them (input-only), and a one-machine session its own batch queries."""
    g = linear_chain_graph()
    x = np.random.default_rng(2).random((2, *g.input_shape))
    ref = run_reference(g, x)
    srv = privinfer.Server(g, "he").start()
    try:
        with privinfer.connect("127.0.0.1", srv.port, "he") as s:
            assert np.abs(s.infer(x) - ref).max() <= 0.2
    finally:
        srv.shutdown()
    srv = privinfer.Server(g, "he", allow_batch=True).start()  # the operator's choice: served, input-only
    try:
        with privinfer.connect("127.0.0.1", srv.port, "he", packing="batch") as s:
            assert np.abs(s.infer(x) - ref).max() <= 0.2 and s.stats.privacy["packing"] == "batch"
            assert s.stats.privacy["guarantee"] == "cryptographic-input-only"
    finally:
        srv.shutdown()
    with privinfer.PrivateSession(g, "he", spawn="thread", packing="batch") as s:  # one machine: its own choice
        assert np.abs(s.infer(x) - ref).max() <= 0.2


def test_concurrent_clients(cryptonets_like):
    g, srv = cryptonets_like
    x = np.random.default_rng(6).random((2, 1, 28, 28))
    ref = run_reference(g, x)
    errs = []

    def run(i):
        try:
            with privinfer.connect("127.0.0.1", srv.port, "he") as s:
                errs.append(float(np.abs(s.infer(x[i]) - ref[i]).max()))
        except Exception as e:  # pragma: no cover - reported below
            errs.append(e)
    ts = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    [t.start() for t in ts]
    [t.join(60) for t in ts]
    assert all(isinstance(e, float) and e <= TOL for e in errs), errs
