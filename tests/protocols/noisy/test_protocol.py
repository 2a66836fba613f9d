"""The `noisy` protocol end to end: exactness without noise, two processes, accounting, budget, training."""
import math

import numpy as np
import pytest

import privinfer
from privinfer import zoo
from privinfer.errors import BudgetExceededError, PeerError, PrivinferError
from privinfer.model.reference import run_reference
from privinfer.protocols.noisy import Noisy, client_for_test, train_noisy
from privinfer.transport import channel_pair


@pytest.fixture(scope="module")
def model():
    return zoo.load_model("minionn-mnist")


@pytest.fixture(scope="module")
def digits():
    return zoo.load_dataset("digits", "test")


@pytest.mark.parametrize("split", [3, "2", 6])
def test_no_noise_logits_equal_reference(model, digits, split):
    X, _ = digits
    with privinfer.PrivateSession(model, "noisy", spawn="thread", split=split, epsilon="inf") as s:
        out = s.infer(X[:16])
        assert s.stats.privacy["input_private"] is False
        assert s.stats.privacy["epsilon_total"] == "inf"
    assert np.max(np.abs(out - run_reference(model, X[:16]))) < 1e-5


def test_two_processes_and_stats_show_epsilon(model, digits):
    X, _ = digits
    with privinfer.PrivateSession(model, "noisy", split=3, epsilon=2.0, clip=1300.0) as s:  # server process
        assert s._proc is not None and s._proc.is_alive()
        s.infer(X[:3])
        s.infer(X[3])
        p = s.stats.privacy
    assert p["epsilon_per_query"] == 2.0 and p["releases"] == 4 and p["epsilon_total"] == 8.0
    assert p["delta_total"] == 0.0 and p["noise_source"] == "os.urandom"
    assert p["noise_scale"] == pytest.approx(2 * 1300.0 / 2.0)
    assert "weights are sent to the client" in p["model_privacy"]


def test_serve_and_connect_with_gaussian(model, digits):
    X, _ = digits
    server = privinfer.serve(model, "noisy", split=3, clip=40.0)  # recommended clip
    try:
        with privinfer.connect(server.host, server.port, "noisy", epsilon=1.0, mechanism="gaussian",
                               delta=1e-5) as s:
            out = s.infer(X[:2])
            assert out.shape == (2, 10)
            p = s.stats.privacy
        assert p["clip"] == 40.0 and p["norm"] == "l2" and p["releases"] == 2
        assert p["accountant"].startswith("opacus") and 1.0 < p["epsilon_total"] < 2.0
    finally:
        server.shutdown()


def test_budget_refuses_before_sending(model, digits):
    X, _ = digits
    with privinfer.PrivateSession(model, "noisy", spawn="thread", split=3, epsilon=1.0, clip=1000.0,
                                  budget=3.0) as s:
        s.infer(X[:2])
        sent = s.channel.stats.bytes_sent
        with pytest.raises(BudgetExceededError):
            s.infer(X[2:4])
        assert s.channel.stats.bytes_sent == sent  # nothing left the client
        assert s.client.privacy()["epsilon_total"] == 2.0


def test_clip_defaults_to_the_servers_public_data_median(model, digits):
    X, _ = digits
    with privinfer.PrivateSession(model, "noisy", spawn="thread", split=3, epsilon=1.0) as s:
        s.infer(X[0])
        feats = run_reference(model, zoo.load_dataset("digits", "train")[0], stop=3).reshape(-1, 2304)
        assert s.stats.privacy["clip"] == pytest.approx(np.median(np.abs(feats).sum(1)), rel=1e-9)
    with pytest.raises(PrivinferError, match="clip"):  # no public data: the client must choose C
        privinfer.PrivateSession(model, "noisy", spawn="thread", split=3, epsilon=1.0, dataset=None)
    with pytest.raises(PrivinferError, match="split"):
        Noisy(model)


def test_server_checks_feature_shape(model):
    proto = Noisy(model, split=3)
    server_side = proto.server_side({})
    c, s = channel_pair(timeout=10)
    with c, s:
        c.send_tensor(np.zeros((1, 5), dtype=np.float32))
        with pytest.raises(privinfer.ShapeError):
            server_side.query(s, {"batch": 1})


def test_seeded_client_is_reproducible_and_noise_has_the_scale(model, digits):
    X, _ = digits
    proto = Noisy(model, split=3)
    welcome = proto.server_side({}).welcome()
    outs = []
    for _ in range(2):
        cl = client_for_test(welcome, model, np.random.default_rng(7), epsilon=4.0, clip=500.0)
        c, s = channel_pair(timeout=10)
        with c, s:
            proto.server_side({}).setup(s)
            cl.setup(c)
        outs.append(cl.privatize(X[:50].astype(np.float64)))
    assert np.array_equal(outs[0], outs[1])
    clean = run_reference(model, X[:50], stop=3).reshape(50, -1)
    clean = clean * np.minimum(1.0, 500.0 / np.abs(clean).sum(1, keepdims=True))
    noise = outs[0].reshape(50, -1) - clean
    assert np.mean(np.abs(noise)) == pytest.approx(2 * 500.0 / 4.0, rel=0.02)


def test_train_noisy_bottleneck_tiny(model, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVINFER_CACHE", str(tmp_path))
    X, y = digits
    data = (X[:96], y[:96], X[96:160], y[96:160])
    m = train_noisy(model, 3, data, 5.0, bottleneck=4, hidden=16, epochs=2, progress=False, eval_repeats=1)
    assert m.split == 7 and m.graph.shapes[m.split] == (4,) and m.clip == 1.0
    assert m.graph.names[3:7] == ("noisy.head.0", "noisy.head.1", "noisy.head.2", "noisy.head.3")
    assert m.path and m.path.startswith(str(tmp_path))
    again = train_noisy(model, 3, data, 5.0, bottleneck=4, hidden=16, epochs=2, progress=False, eval_repeats=1)
    assert again.meta == m.meta  # from the cache
    with privinfer.PrivateSession(m.graph, "noisy", spawn="thread", **m.session_options()) as s:
        assert s.infer(X[:3]).shape == (3, 10)
        assert s.stats.privacy["client_layers"][-1] == "noisy.head.3"
    assert math.isfinite(m.meta["accuracy_noisy_finetuned"])


def test_finetune_at_server_start(model, digits, tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVINFER_CACHE", str(tmp_path))
    import privinfer.protocols.noisy.train as nt
    real = nt.train_noisy
    monkeypatch.setattr(nt, "train_noisy", lambda *a, **k: real(*a, **{**k, "epochs": 1, "limit": 64,
                                                                       "eval_repeats": 1}))
    X, _ = digits
    with privinfer.PrivateSession(model, "noisy", spawn="thread", split=3, epsilon=5.0, finetune=True,
                                  bottleneck=4) as s:
        assert s.client.split == 7 and s.stats.privacy["clip"] == 1.0  # the server's recommended clip
        assert s.infer(X[:2]).shape == (2, 10)


def test_bad_client_options_are_refused_on_both_sides(model):
    with pytest.raises(PrivinferError, match="mechanism"):
        Noisy.validate_client_options({"epsilon": 1.0, "mechanism": "nope"})
    with pytest.raises(PrivinferError, match="epsilon"):
        Noisy.validate_client_options({"epsilon": -1})
    from privinfer.transport import FrameType, connect
    server = privinfer.serve(model, "noisy", split=3)
    try:
        with connect(server.host, server.port, timeout=30) as ch:  # a client that skips its own checks
            ch.send_json({"protocol": "noisy", "options": {"epsilon": 1.0, "mechanism": "nope"}}, FrameType.HELLO)
            with pytest.raises(PeerError, match="mechanism"):
                ch.recv_json(FrameType.WELCOME)
    finally:
        server.shutdown()
