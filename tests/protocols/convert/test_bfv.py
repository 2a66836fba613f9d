"""BFV <-> shares mod t (privinfer/protocols/convert/bfv.py): round trips, mask uniformity, and what a
client with crafted inputs sees (its view is uniform mod t whatever the weights are).

Real BFV ciphertexts under a client key; the tests play both parties in one process. The 2PC's opening of
(x + h + r) mod t is computed here in the clear (its CrypTen implementation: test_ring.py).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from privinfer.model.ir import Graph, Linear
from privinfer.protocols.convert import bfv as conv
from privinfer.protocols.he.bfv import BFVContext
from privinfer.protocols.he.bfv_eval import BFVSegment

_CACHE = {}


def segment(n_in: int, n_out: int, bias_shift: float = 0.0, seed: int = 0):
    """(segment, client ctx, server ctx) for y = W x + b on inputs in [-4, 4]."""
    key = (n_in, n_out, bias_shift, seed)
    if key not in _CACHE:
        rng = np.random.default_rng(seed * 1000 + n_in * 10 + n_out)
        lin = Linear(rng.normal(size=(n_out, n_in)) / n_in, rng.normal(size=n_out) + bias_shift)
        seg = BFVSegment(Graph((n_in,), [lin], input_range=(-4.0, 4.0)), 0, 1)
        cli = BFVContext.create(seg.params, seg.plan.rotation_steps)
        srv = seg.ctx.keyed()
        srv.load_public(cli.public_blobs(), seg.plan.rotation_steps)
        _CACHE[key] = (seg, cli, srv)
    return _CACHE[key]


def exact(seg, x_int):
    A, b = seg.program.ops[0].A, seg.program.ops[0].b
    return (A @ x_int + b).astype(np.int64)


def he_to_shares(seg, cli, srv, z):
    cts = [srv.ct_from_bytes(b, level=0) for b in conv.upload(cli, seg.plan, z)]
    blobs, b = conv.mask_to_shares(srv, seg, seg.evaluate(srv, cts))
    return conv.client_share(cli, blobs, seg.positions, seg.n_out_ct), b, blobs


values = st.lists(st.floats(-4, 4, allow_nan=False), min_size=1, max_size=12)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_he_to_shares_round_trip(n_in, n_out, data):
    seg, cli, srv = segment(n_in, n_out)
    x = np.array(data.draw(st.lists(st.floats(-4, 4, allow_nan=False), min_size=n_in, max_size=n_in)))
    z = conv.encode_input(x, cli.t)
    a, b, _ = he_to_shares(seg, cli, srv, z)
    t, h = cli.t, conv.half(cli.t)
    assert a.min() >= 0 and a.max() < t and b.min() >= 0 and b.max() < t
    y = a + b - h - t * (a + b >= t)           # what the 2PC's lift computes (test_ring.py)
    np.testing.assert_array_equal(y, exact(seg, np.rint(x * 2 ** 16)))


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 12), st.integers(1, 12), st.data())
def test_shares_to_he_round_trip(n_in, n_out, data):
    seg, cli, srv = segment(n_in, n_out)
    x = np.array(data.draw(st.lists(st.floats(-4, 4, allow_nan=False), min_size=n_in, max_size=n_in)))
    t, h = cli.t, conv.half(cli.t)
    x_int = np.rint(x * 2 ** 16).astype(np.int64)
    r = conv.input_mask(t, n_in)
    z = np.mod(x_int + h + r, t)                # opened to the client by the 2PC
    cts = [srv.ct_from_bytes(b, level=0) for b in conv.upload(cli, seg.plan, z)]
    conv.unmask_input(srv, seg.plan, cts, r)
    blobs = conv.reveal_final(srv, seg, seg.evaluate(srv, cts))
    y = conv.client_result(cli, blobs, seg.positions, seg.n_out_ct, 16 + seg.weight_bits)
    np.testing.assert_array_equal(np.rint(y * 2.0 ** (16 + seg.weight_bits)).astype(np.int64), exact(seg, x_int))


def _bins(v, t, k=64):
    return np.bincount((np.asarray(v, dtype=object) * k // t).astype(np.int64), minlength=k)


def test_client_view_is_uniform_in_every_slot():
    """Every slot of a masked result (outputs, zero slots, partial sums, both rows) is uniform mod t."""
    seg, cli, srv = segment(6, 4)
    z = conv.encode_input(np.linspace(-1, 1, 6), cli.t)
    views = np.concatenate([cli.decrypt(blob) for _ in range(6) for blob in he_to_shares(seg, cli, srv, z)[2]])
    assert len(views) == 6 * cli.N
    assert stats.chisquare(_bins(views, cli.t)).pvalue > 1e-4
    assert stats.chisquare(np.bincount(views % 101, minlength=101)).pvalue > 1e-4


def test_final_reveal_masks_every_non_output_slot():
    seg, cli, srv = segment(6, 4)
    x = np.linspace(-1, 1, 6)
    z = conv.encode_input(x, cli.t)
    cts = [srv.ct_from_bytes(b, level=0) for b in conv.upload(cli, seg.plan, z)]
    dec = cli.decrypt(conv.reveal_final(srv, seg, seg.evaluate(srv, cts))[0])
    ci, si = seg.positions  # (n_out, L): an output is the sum of its L lanes of partial sums
    assert si.shape[1] > 1 and np.all(ci == 0)  # the lane packing: the lane masks sum to zero
    np.testing.assert_array_equal(cli.centered(dec[si].sum(axis=1) % cli.t), exact(seg, np.rint(x * 2 ** 16)))
    rest = np.delete(dec, si[:, 0])  # every slot but one lane of each output: uniform (partial sums hidden)
    assert stats.chisquare(_bins(rest, cli.t, 32)).pvalue > 1e-4


def test_crafted_input_attack_sees_nothing_of_the_weights():
    """The client sends x = 0, so y = b_int is the bias itself. Two servers whose biases differ by 100 (in value
    units: 2^38 slot units) must give indistinguishable client views (two-sample KS, each uniform mod t), and
    the share never equals the bias."""
    n_in, n_out = 4, 12
    seg0, cli0, srv0 = segment(n_in, n_out, 0.0, seed=1)
    seg1, cli1, srv1 = segment(n_in, n_out, 100.0, seed=1)
    zero = np.zeros(n_in, dtype=np.int64)
    v0 = np.concatenate([he_to_shares(seg0, cli0, srv0, zero)[0] / cli0.t for _ in range(25)])
    v1 = np.concatenate([he_to_shares(seg1, cli1, srv1, zero)[0] / cli1.t for _ in range(25)])
    bias0 = seg0.program.ops[0].b
    assert not np.any(np.isin(v0 * cli0.t, np.mod(bias0, cli0.t)))
    assert stats.ks_2samp(v0, v1).pvalue > 1e-3
    assert stats.kstest(v0, "uniform").pvalue > 1e-3 and stats.kstest(v1, "uniform").pvalue > 1e-3


def test_bad_shares_are_refused():
    from privinfer.errors import ProtocolError, ShapeError
    with pytest.raises(ShapeError):
        conv.check_share(np.zeros(3), 97, 4)
    with pytest.raises(ProtocolError):
        conv.check_share(np.array([0.0, 97.0]), 97, 2)
    with pytest.raises(ProtocolError):
        conv.check_share(np.array([0.5, 1.0]), 97, 2)


def test_pads_made_ahead_keep_the_hand_overs_exact():
    """`output_pads` made before the result exists (as the server does while the 2PC runs) and unmasking
    plaintexts made from r before the ciphertexts arrive give the same exact shares and results."""
    seg, cli, srv = segment(7, 5)
    t, h = cli.t, conv.half(cli.t)
    x_int = np.rint(np.linspace(-3, 3, 7) * 2 ** 16).astype(np.int64)
    pads = conv.output_pads(srv, seg, last=False)
    cts = [srv.ct_from_bytes(b, level=0) for b in conv.upload(cli, seg.plan, conv.encode_input(x_int / 2 ** 16, t))]
    blobs, b = conv.mask_to_shares(srv, seg, seg.evaluate(srv, cts), pads)
    a = conv.client_share(cli, blobs, seg.positions, seg.n_out_ct)
    np.testing.assert_array_equal(a + b - h - t * (a + b >= t), exact(seg, x_int))
    r = conv.input_mask(t, 7)
    pts = conv.unmask_plaintexts(srv, seg.plan, r)
    cts = [srv.ct_from_bytes(b, level=0) for b in conv.upload(cli, seg.plan, np.mod(x_int + h + r, t))]
    conv.unmask_input(srv, seg.plan, cts, pts=pts)
    blobs = conv.reveal_final(srv, seg, seg.evaluate(srv, cts), conv.output_pads(srv, seg, last=True))
    y = conv.client_result(cli, blobs, seg.positions, seg.n_out_ct, 16 + seg.weight_bits)
    np.testing.assert_array_equal(np.rint(y * 2.0 ** (16 + seg.weight_bits)).astype(np.int64), exact(seg, x_int))
    with pytest.raises(Exception, match="pads"):
        conv.mask_to_shares(srv, seg, seg.evaluate(srv, cts), ([], np.zeros((0, srv.N), dtype=np.int64)))
