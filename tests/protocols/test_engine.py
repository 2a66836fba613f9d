"""The engine (`privinfer.protocols.engine`): value kinds, plans of steps, the one loop, and the four protocols
as single-segment plans through it."""
import threading

import numpy as np
import pytest

from privinfer.errors import ProtocolError, ShapeError
from privinfer.model.reference import run_reference
from privinfer.protocols import get_protocol
from privinfer.protocols.engine import (Download, EngineClient, Kind, Layers, Step, Upload, Value, check_chain,
                                        run_steps)
from privinfer.transport import channel_pair
from privinfer.zoo import load_model


@pytest.fixture(scope="module")
def graph():
    return load_model("cryptonets-mnist")


def x_batch(g, n=2, seed=0):
    return np.random.default_rng(seed).random((n, *g.input_shape))


def both(client_steps, server_steps, x):
    """Run a plan's two halves over an in-process channel pair; returns (client value, server value)."""
    a, b = channel_pair()
    out = {}

    def server():
        try:
            out["server"] = run_steps(b, server_steps, Value.expected(x.shape[0]))[0]
        except Exception as e:  # reported by the assertion below
            out["server_error"] = e
    t = threading.Thread(target=server)
    t.start()
    try:
        out["client"] = run_steps(a, client_steps, Value.plain(x))[0]
    finally:
        t.join(30)
    assert "server_error" not in out, out.get("server_error")
    return out["client"], out["server"]


def test_value_kinds_say_who_holds_what():
    x = np.zeros((3, 4))
    v = Value.plain(x)
    assert v.kind == Kind.PLAIN_CLIENT and v.batch == 3 and v.data is x
    s = Value.expected(3)
    assert s.kind == Kind.PLAIN_CLIENT and s.data is None
    assert v.to(Kind.SHARES, 1).kind == Kind.SHARES and v.to(Kind.SHARES).batch == 3
    assert {str(k) for k in Kind} == {"plain@client", "cipher", "shares", "noisy@server", "plain@server"}


def test_plain_plan_matches_the_reference_and_kinds_flow(graph):
    x = x_batch(graph)
    n = len(graph.layers)
    client = [Upload(graph.input_shape, True), Layers(graph, 0, n, Kind.PLAIN_SERVER, holder=False),
              Download(graph.output_shape, True)]
    server = [Upload(graph.input_shape, False), Layers(graph, 0, n, Kind.PLAIN_SERVER, holder=True),
              Download(graph.output_shape, False)]
    check_chain(client), check_chain(server)
    c, s = both(client, server, x)
    assert c.kind == s.kind == Kind.PLAIN_CLIENT and s.data is None
    np.testing.assert_allclose(c.data, run_reference(graph, x.astype(np.float32)), atol=1e-5)


def test_a_split_plan_of_segments_equals_one_segment(graph):
    """Client layers 0-1, then the server's layers 2-5: the composition of segments is the whole network."""
    x = x_batch(graph)
    n = len(graph.layers)
    client = [Layers(graph, 0, 2, Kind.PLAIN_CLIENT, holder=True), Upload(graph.shapes[2], True),
              Layers(graph, 2, n, Kind.PLAIN_SERVER, holder=False), Download(graph.output_shape, True)]
    server = [Layers(graph, 0, 2, Kind.PLAIN_CLIENT, holder=False), Upload(graph.shapes[2], False),
              Layers(graph, 2, n, Kind.PLAIN_SERVER, holder=True), Download(graph.output_shape, False)]
    c, _ = both(client, server, x)
    np.testing.assert_allclose(c.data, run_reference(graph, x), atol=1e-4)


def test_chains_whose_kinds_do_not_meet_are_refused(graph):
    with pytest.raises(ProtocolError, match="cannot take a value of kind plain@client"):
        check_chain([Download(graph.output_shape, True)])
    with pytest.raises(ProtocolError, match="ends with a value of kind plain@server"):
        check_chain([Upload(graph.input_shape, True)])
    with pytest.raises(ProtocolError, match="no plan"):
        run_steps(None, [], Value.plain(np.zeros((1, 2))))


def test_the_loop_checks_what_a_step_produces():
    class Liar(Step):
        accepts, produces = Kind.PLAIN_CLIENT, Kind.SHARES

        def run(self, ch, value):
            return value.to(Kind.CIPHER)
    with pytest.raises(ProtocolError, match="produced cipher"):
        run_steps(None, [Liar()], Value.plain(np.zeros((1, 2))))


def test_server_refuses_a_wrong_shape_or_non_finite_upload(graph):
    a, b = channel_pair()
    a.send_tensor(np.zeros((2, 3), dtype=np.float32))
    with pytest.raises(ShapeError, match="does not match"):
        Upload(graph.input_shape, False).run(b, Value.expected(2))
    bad = np.zeros((1, *graph.input_shape), dtype=np.float32)
    bad[0, 0, 0, 0] = np.nan
    a.send_tensor(bad)
    with pytest.raises(ShapeError, match="finite"):
        Upload(graph.input_shape, False).run(b, Value.expected(1))


@pytest.mark.parametrize("name", ["plain", "he", "ss", "noisy", "cheetah", "hybrid"])
def test_every_protocol_is_an_engine_plan(name):
    """No protocol keeps a query loop of its own: each client side is an EngineClient."""
    mod = __import__(get_protocol(name).__module__, fromlist=["_"])
    clients = [v for k, v in vars(mod).items() if isinstance(v, type) and k.endswith("Client") and k.startswith("_")]
    assert clients and all(issubclass(c, EngineClient) and "query" not in vars(c) for c in clients)
