"""HE <-> shares conversions (privinfer/protocols/convert.py): round trips, mask distributions, hiding.

A tiny linear HE segment (the `he` latency engine on a Linear layer) gives real CKKS ciphertexts under a
client key; the tests play both parties in one process.
"""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from privinfer.model.ir import Graph, Linear
from privinfer.protocols import convert
from privinfer.protocols.he import HE, _KeyedContext
from privinfer.protocols.he.context import CKKSContext
from privinfer.protocols.he.latency import SealBackend

_CACHE = {}


def segment(n_in: int, n_out: int):
    """(he, server ctx with the client's keys, client ctx) for y = W x + b, W fixed by the shape."""
    if (n_in, n_out) not in _CACHE:
        rng = np.random.default_rng(n_in * 100 + n_out)
        he = HE(Graph((n_in,), [Linear(rng.normal(size=(n_out, n_in)) / n_in, rng.normal(size=n_out))]), circuit_privacy="fast")
        client = CKKSContext.create(he.latency_params, he.plan.rotation_steps)
        server = _KeyedContext(he.ctx)
        server.load_public(client.public_blobs(), he.plan.rotation_steps)
        _CACHE[(n_in, n_out)] = (he, server, client)
    return _CACHE[(n_in, n_out)]


def evaluate(he, server, client, x):
    scale = 2.0 ** he.latency_params.input_scale_bits
    cts = [server.ct_from_bytes(b, level=0) for b in convert.shares_to_he_client(client, he.plan, x, scale)]
    return cts


def reference(he, x):
    lin = he.graph.layers[0]
    return lin.weight @ x + lin.bias


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_he_to_shares_round_trip(n_in, n_out, data):
    he, server, client = segment(n_in, n_out)
    x = np.array(data.draw(st.lists(st.floats(-8, 8), min_size=n_in, max_size=n_in)))
    out = he.compiled.evaluate(evaluate(he, server, client, x), backend=SealBackend(server))
    ct, s_share, M = convert.he_to_shares_server(server, out, he.plan.output_slots())
    c_share = convert.he_to_shares_client(client, server.ct_to_bytes(ct), he.plan.output_slots())
    np.testing.assert_allclose(c_share + s_share, reference(he, x), atol=1e-3)
    assert np.max(np.abs(c_share - reference(he, x))) > 1.0  # the client's share is not the value


@settings(max_examples=12, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_shares_to_he_round_trip(n_in, n_out, data):
    """The 2PC reveals z = x + r to the client; the server removes the gather of r homomorphically."""
    he, server, client = segment(n_in, n_out)
    x = np.array(data.draw(st.lists(st.floats(-8, 8), min_size=n_in, max_size=n_in)))
    bits = convert.share_mask_bits(server, he.latency_params.input_scale_bits)
    r = convert.share_mask((n_in,), bits)
    cts = convert.shares_to_he_server(server, he.plan, evaluate(he, server, client, x + r), r)
    out = he.compiled.evaluate(cts, backend=SealBackend(server))
    y = client.decrypt(server.ct_to_bytes(out))[he.plan.output_slots()]
    np.testing.assert_allclose(y, reference(he, x), atol=1e-3)


def test_share_mask_is_uniform_on_its_grid():
    bits = 4  # small, so that the chi-square sees every grid point class
    r = convert.share_mask((200_000,), bits)
    assert np.all(r * 2 ** convert.FIXED_BITS == np.round(r * 2 ** convert.FIXED_BITS))
    assert np.abs(r).max() <= 2 ** bits
    counts, _ = np.histogram(r, bins=64, range=(-2 ** bits, 2 ** bits))
    assert stats.chisquare(counts).pvalue > 1e-4
    assert stats.kstest(convert.share_mask((20_000,), 36) / 2 ** 36, "uniform", args=(-1, 2)).pvalue > 1e-4


def client_views(he, server, client, x, draws):
    """What the client sees in an HE -> shares conversion: every slot (real part) of the masked result."""
    out0 = he.compiled.evaluate(evaluate(he, server, client, x), backend=SealBackend(server))
    views, M = [], None
    for _ in range(draws):
        ct = server.ct_from_bytes(server.ct_to_bytes(out0))
        ct, _, M = convert.he_to_shares_server(server, ct, he.plan.output_slots())
        views.append(client.decrypt(server.ct_to_bytes(ct)))
    return np.concatenate(views), M


def test_he_mask_is_uniform_over_every_slot():
    he, server, client = segment(6, 4)
    x = np.linspace(-1, 1, 6)
    views, M = client_views(he, server, client, x, 20)
    # every slot, output or not, is y + m with m uniform on [-M, M] and |y| small: KS against U[-M, M]
    assert stats.kstest(views / M, "uniform", args=(-1, 2)).pvalue > 1e-4
    assert 2 ** 8 <= M <= 2 ** 40  # as large as the output level allows (see convert.py), never zero


def test_he_mask_hiding_is_what_privacy_states():
    """A threshold distinguisher on one output slot: its advantage must match delta / 2M (the stated
    statistical distance), i.e. the mask hides no better and no worse than `hiding_bits` claims."""
    he, server, client = segment(4, 1)
    lin = he.graph.layers[0]
    x0 = np.zeros(4)
    x1 = np.linalg.lstsq(lin.weight, lin.bias + 256.0, rcond=None)[0]  # y1 - y0 = 256 on the output
    pos = he.plan.output_slots()[0]
    v0, M = client_views(he, server, client, x0, 500)
    v1, _ = client_views(he, server, client, x1, 500)
    slots = he.latency_params.slots
    a, b = v0[pos::slots], v1[pos::slots]
    delta = float(reference(he, x1)[0] - reference(he, x0)[0])
    t = (a.mean() + b.mean()) / 2
    advantage = abs(np.mean(b > t) - np.mean(a > t))
    assert abs(advantage - abs(delta) / (2 * M)) < 0.1
    assert convert.hiding_bits(M, value_bits=8) == round(max(0.0, math.log2(M) - 8), 1)
