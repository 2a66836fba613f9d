"""Property tests of the latency packing's slot layouts, on plaintext slot vectors (no encryption).

`simulate` runs exactly the evaluator the server runs (same rotations, products, folds), with numpy arrays
in place of ciphertexts; it must reproduce the reference executor for any architecture the planner accepts.
"""
from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from torch import nn

from privinfer.model import compile_model, run_reference
from privinfer.model.torch_layers import PolyAct, Square
from privinfer.protocols.he.latency import (GARBAGE, Layout, NumpyBackend, _assign, client_vectors,
                                            plan_latency, simulate)
from privinfer.protocols.he.program import build_program

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _graph(shape, layers, seed):
    torch.manual_seed(seed)
    m = nn.Sequential(*layers)
    m.input_shape = shape
    return compile_model(m)


@st.composite
def conv_nets(draw):
    cin = draw(st.integers(1, 3))
    h = draw(st.integers(5, 12))
    k = draw(st.integers(1, min(5, h)))
    stride = draw(st.integers(1, 3))
    pad = draw(st.integers(0, 2))
    cout = draw(st.integers(1, 5))
    act = draw(st.sampled_from(["sq", "p2", "p3"]))
    pool = draw(st.booleans())
    layers = [nn.Conv2d(cin, cout, k, stride=stride, padding=pad)]
    out = (h + 2 * pad - k) // stride + 1
    layers.append(Square() if act == "sq" else PolyAct([0.1, 0.4, 0.2] + ([0.05] if act == "p3" else [])))
    if pool and out >= 2:
        layers.append(nn.AvgPool2d(2))
        out //= 2
    hidden = draw(st.integers(1, 40))
    layers += [nn.Flatten(), nn.Linear(cout * out * out, hidden), Square(), nn.Linear(hidden, draw(st.integers(1, 12)))]
    return _graph((cin, h, h), layers, draw(st.integers(0, 1000)))


@st.composite
def linear_chains(draw):
    dims = draw(st.lists(st.integers(1, 300), min_size=2, max_size=5))
    layers = []
    for a, b in zip(dims, dims[1:]):
        layers += [nn.Linear(a, b), Square()]
    layers.pop()
    return _graph((dims[0],), layers, draw(st.integers(0, 1000)))


@SETTINGS
@given(conv_nets(), st.sampled_from([1024, 4096]))
def test_conv_packing_matches_reference(g, slots):
    prog = build_program(g)
    if prog.max_dim() > slots:
        return
    plan = plan_latency(prog, slots)
    x = np.random.default_rng(0).random(g.input_shape)
    assert np.allclose(simulate(plan, prog, x), run_reference(g, x[None])[0], atol=1e-9)
    assert all(s & (s - 1) == 0 for s in plan.rotation_steps)  # only power-of-two Galois keys


@SETTINGS
@given(linear_chains(), st.sampled_from([512, 4096]))
def test_linear_chain_packing_matches_reference(g, slots):
    prog = build_program(g)
    if prog.max_dim() > slots:
        return
    plan = plan_latency(prog, slots)
    x = np.random.default_rng(1).standard_normal(g.input_shape)
    assert np.allclose(simulate(plan, prog, x), run_reference(g, x[None])[0], atol=1e-8)
    assert not plan.out.has_garbage  # output slots: logits, copies of them, or exact zeros


@SETTINGS
@given(st.integers(1, 64), st.integers(1, 64), st.integers(0, 3), st.data())
def test_diagonal_assignment_is_a_matmul(n_out, n_in, log_copies, data):
    """One diagonal-method segment on a replicated input equals W @ x, in every strategy the planner tries."""
    from privinfer.protocols.he.latency import _diag_candidates, next_pow2
    from privinfer.protocols.he.program import Affine
    rng = np.random.default_rng(n_out * 131 + n_in)
    W = rng.standard_normal((n_out, n_in)) * (rng.random((n_out, n_in)) < data.draw(st.floats(0.2, 1.0)))
    seg = Affine(W, np.zeros(n_out), W != 0)
    P_in = next_pow2(max(n_in, 1))
    slots = max(next_pow2(max(n_in, n_out)), P_in) << log_copies
    lin = Layout(P_in, np.where(np.arange(P_in) < n_in, np.arange(P_in), -1))
    x = rng.standard_normal(n_in)
    v = np.where(lin.tiled(slots) >= 0, x[np.maximum(lin.tiled(slots), 0)], 0.0)
    be = NumpyBackend(slots)
    for step in _diag_candidates(seg, lin, slots, last=False):
        z = np.zeros(slots)
        for j in step.used_j():
            d = np.where(step.rows[j] >= 0, W[np.maximum(step.rows[j], 0), np.maximum(step.cols[j], 0)], 0.0)
            z += np.tile(d, slots // step.period) * be.rotate(v, j)
        for f in step.fold:
            z = z + be.rotate(z, f)
        idx = step.out.tiled(slots)
        pos = step.out.first_slot(n_out)
        assert np.allclose(z[pos], W @ x)
        assert np.allclose(z[idx == -1], 0.0)  # exact zeros stay zero
        assert np.allclose(z[idx >= 0], (W @ x)[idx[idx >= 0]])  # every copy is right


@SETTINGS
@given(conv_nets())
def test_client_gather_is_im2col(g):
    """The client's gathered vectors times the server's weights, folded, give the first segment exactly."""
    prog = build_program(g)
    if prog.max_dim() > 4096:
        return
    plan = plan_latency(prog, 4096)
    first = plan.steps[0]
    if first.kind != "gather":
        return
    seg = prog.segments[0]
    x = np.random.default_rng(2).random(g.input_shape).reshape(-1)
    vecs = client_vectors(plan, x)
    z = np.zeros(plan.slots)
    for c in range(first.n_ct):
        r, col = first.rows[c], first.gather[c]
        z += vecs[c] * np.where(r >= 0, seg.A[np.maximum(r, 0), np.maximum(col, 0)], 0.0)
    for f in first.fold:
        z = z + np.roll(z, -f)
    idx = first.out.tiled(plan.slots)
    assert np.allclose(z[idx >= 0], (seg.A @ x)[idx[idx >= 0]])


def test_assign_refuses_unreachable_weights():
    pattern = np.ones((2, 3), dtype=bool)
    in_idx = np.array([0, 1, -1, -1])  # element 2 absent from the layout
    owner = np.array([0, 1, 0, 1])
    assert _assign(pattern, in_idx, owner, 4) is None
    assert GARBAGE == -2
