"""Sound interval bounds, and the protocols' refusal to let arithmetic wrap (issue 14, failure 1).

Attacks: the inputs in the published range that push values highest (corners of the box chosen from the
weights' signs, all-ones, random) must never exceed the bound; `he` must decrypt them correctly; inputs
outside the range must be refused before anything is sent; `ss` must refuse a range its ring cannot hold.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn

import privinfer
from privinfer import zoo
from privinfer.errors import InputRangeError, ParameterError
from privinfer.model import compile_model, run_reference
from privinfer.model.bounds import check_fixed_point, interval_bounds, peak_bits, poly_interval
from privinfer.model.reference import apply_layer
from privinfer.model.torch_layers import Square as Sq


def small_graph(seed=0, act=nn.ReLU):
    torch.manual_seed(seed)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), act(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4)).eval()
    return compile_model(m, (1, 8, 8), input_range=(0, 1))


def layer_peaks(graph, x):
    t = torch.from_numpy(x)
    out = []
    for layer in graph.layers:
        t = apply_layer(layer, t)
        out.append(float(t.abs().max()))
    return out


@given(st.integers(0, 3), st.sampled_from([nn.ReLU, Sq]))
def test_bounds_hold_for_random_and_corner_inputs(seed, act):
    g = small_graph(seed, act)
    bounds = [b.peak for b in interval_bounds(g)]
    rng = np.random.default_rng(seed)
    xs = [rng.random((16, 1, 8, 8)), rng.integers(0, 2, (16, 1, 8, 8)).astype(float), np.ones((1, 1, 8, 8))]
    w = g.layers[0].weight  # the corner that maximises each first-layer filter
    xs.append(np.stack([np.tile((w[c, 0] > 0).astype(float), (3, 3))[:8, :8][None] for c in range(3)]))
    for x in xs:
        for got, bound in zip(layer_peaks(g, x), bounds):
            assert got <= bound * (1 + 1e-9) + 1e-12


def test_poly_interval_is_exact_on_a_parabola():
    lo, hi = poly_interval((0.0, -2.0, 1.0), np.array([-1.0, 2.0]), np.array([3.0, 4.0]))
    np.testing.assert_allclose(lo, [-1.0, 0.0])  # (x-1)^2 - 1 has its minimum inside [-1, 3]
    np.testing.assert_allclose(hi, [3.0, 8.0])


def test_ss_refuses_a_range_its_ring_cannot_hold():
    g = zoo.load_model("minionn-mnist")
    check_fixed_point(g, 16)  # [0, 1] fits
    with pytest.raises(ParameterError, match="64-bit ring"):
        check_fixed_point(g.with_input_range((0, 1e9)), 16)  # the 1e9 inputs
    from privinfer.protocols.ss import SecretSharing
    with pytest.raises(ParameterError):
        SecretSharing(g.with_input_range((0, 1e9)), dealer="local")  # refused when serving starts, not at the 1000th query


def test_he_sizes_value_bits_from_the_range_and_refuses_too_few():
    from privinfer.protocols.he import HE, _value_bits_for_range
    g = zoo.load_model("cryptonets-mnist")
    assert _value_bits_for_range(g, None, explicit=False) == peak_bits(g) >= 16  # the default 10 would wrap
    assert _value_bits_for_range(g.with_input_range(None), None, explicit=False) is None  # no range, no promise
    with pytest.raises(ParameterError, match="value_bits"):
        HE(g, value_bits=8)  # refused before any parameter is built


def test_he_worst_inputs_in_range_decrypt_right_and_out_of_range_is_refused():
    g = zoo.load_model("cryptonets-mnist")
    w = g.layers[0].weight
    corner = np.zeros((1, 28, 28))  # pixels on where the first filter is positive: large activations
    corner[0, 2:26, 2:26] = np.tile((w[0, 0] > 0).astype(float), (5, 5))[:24, :24]
    xs = np.stack([np.ones((1, 28, 28)), corner])
    with privinfer.PrivateSession(g, "he", spawn="thread") as s:
        got = s.infer(xs)
        want = run_reference(g, xs)
        assert np.abs(want).max() > 100  # far beyond the natural images' logits
        np.testing.assert_allclose(got, want, atol=1e-2 * max(1.0, np.abs(want).max() / 100))
        X, _ = zoo.load_dataset("cryptonets-mnist", "test")
        for bad, cause in (((X[0] * 255).astype(np.uint8), "divide by 255"), (X[0] * 100, "percent"),
                           ((X[0] - 0.13) / 0.31, "standardized")):
            sent = s.channel.stats.bytes_sent
            with pytest.raises(InputRangeError, match=cause):
                s.infer(bad)
            assert s.channel.stats.bytes_sent == sent  # refused before anything was sent
        assert s.infer(X[0]).shape == (10,)  # the session is still usable
