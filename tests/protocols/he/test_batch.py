"""The CryptoNets-style batch engine (privinfer.protocols.he.batch): exact integer kernels, the conv index
plan, the scale planner, end-to-end accuracy against the reference executor, and typed refusals."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as hst

from privinfer.errors import ParameterError, ProtocolError, ShapeError, UnsupportedLayerError
from privinfer.model.ir import AvgPool2d, Conv2d, Flatten, Graph, Linear, MaxPool2d, Poly, ReLU
from privinfer.model.reference import run_reference

ts = pytest.importorskip("tenseal")
B = importlib.import_module("privinfer.protocols.he.batch")
bp = importlib.import_module("privinfer.protocols.he.batch_plan")
rns = importlib.import_module("privinfer.protocols.he.batch_rns")

N = 8192
# depth 3 chain (two squares + outputs) used by most end-to-end tests; 218 bits max at N=8192
BITS3 = [60, 50, 50, 28, 30]
BITS_CUBIC = [60, 40, 40, 40, 38]


@pytest.fixture(scope="module")
def ctx3():
    ctx = B.make_context(N, BITS3, 28)
    return ctx, B.public_copy(ctx)


@pytest.fixture(scope="module")
def ctx_cubic():
    ctx = B.make_context(N, BITS_CUBIC, 28)
    return ctx, B.public_copy(ctx)


def _w(rng, shape, fan_in):
    return rng.normal(0.0, 1.0 / np.sqrt(fan_in), shape)


def _run(ctxs, graph, x, **kw):
    ctx, pub = ctxs
    blobs = B.client_encrypt(ctx, x)
    stats = {}
    out = B.server_evaluate(pub, graph, blobs, x.shape[0], stats=stats, **kw)
    y = B.client_decrypt(ctx, out, x.shape[0], int(np.prod(graph.output_shape)))
    return y, out, stats


# ---------------------------------------------------------------------------------------------
# exact kernels
# ---------------------------------------------------------------------------------------------
PRIMES = B._primes(N, [60, 50, 40, 24, 30])  # real NTT primes of several widths


def _dense_of_blocks(op, n_in):
    M = np.zeros((op.n_out, n_in))
    for rows, insel, Wb in op.blocks:
        cols = np.arange(n_in)[insel]
        M[op.perm[rows][:, None], cols[None, :]] += Wb
    return M


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=hst.integers(1, 3), cout=hst.integers(1, 4), h=hst.integers(3, 9), w=hst.integers(3, 9),
       kh=hst.integers(1, 4), kw=hst.integers(1, 4), sh=hst.integers(1, 3), sw=hst.integers(1, 3),
       pad=hst.tuples(*[hst.integers(0, 2)] * 4), target=hst.sampled_from([1, 8, 64]),
       seed=hst.integers(0, 2 ** 16))
def test_conv_blocks_equal_the_convolution(cin, cout, h, w, kh, kw, sh, sw, pad, target, seed):
    t, b, l, r = pad
    if h + t + b < kh or w + l + r < kw:
        return
    rng = np.random.default_rng(seed)
    W = rng.integers(-9, 10, (cout, cin, kh, kw)).astype(np.float64)
    blocks, perm = bp.conv_blocks(W, (sh, sw), pad, (cin, h, w), target)
    oh, ow = (h + t + b - kh) // sh + 1, (w + l + r - kw) // sw + 1
    # blocks partition the outputs
    assert sorted(perm.tolist()) == list(range(cout * oh * ow))
    assert sum(bl[0].stop - bl[0].start for bl in blocks) == len(perm)
    op = rns.IntLinear(cin * h * w, cout * oh * ow, blocks, perm, 1.0, None)
    M = _dense_of_blocks(op, cin * h * w)
    eye = torch.eye(cin * h * w, dtype=torch.float64).reshape(-1, cin, h, w)
    ref = F.conv2d(F.pad(eye, (l, r, t, b)), torch.from_numpy(W), stride=(sh, sw)).reshape(cin * h * w, -1).T
    np.testing.assert_array_equal(M, ref.numpy())


def _exact_linear(Wi, X, bias, q):
    """Python big-int reference of (Wi @ X + bias) mod q on a few columns."""
    out = np.empty((Wi.shape[0], X.shape[1]), dtype=object)
    for i in range(Wi.shape[0]):
        for c in range(X.shape[1]):
            v = sum(int(Wi[i, j]) * int(X[j, c]) for j in range(Wi.shape[1]))
            out[i, c] = (v + (int(bias[i]) if bias is not None and c < X.shape[1] // 2 else 0)) % q
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_in=hst.integers(1, 40), n_out=hst.integers(1, 6), wbits=hst.integers(1, 30),
       seed=hst.integers(0, 2 ** 16), with_bias=hst.booleans())
def test_integer_linear_is_exact_mod_every_prime(n_in, n_out, wbits, seed, with_bias):
    rng = np.random.default_rng(seed)
    Wi = rng.integers(-(2 ** wbits), 2 ** wbits + 1, (n_out, n_in)).astype(np.float64)
    n = 8  # tiny "ring": columns [0, n) are polynomial 0 (the bias goes there), [n, 2n) polynomial 1
    X = np.stack([rng.integers(0, q, (n_in, 2 * n), dtype=np.uint64) for q in PRIMES])
    for li, q in enumerate(PRIMES):  # extremes: all q-1
        X[li, :, 1] = q - 1
    bias = np.array([int(v) for v in rng.integers(-(2 ** 62), 2 ** 62, n_out)], dtype=object) if with_bias else None
    l1 = float(np.abs(Wi).sum(axis=1).max())
    op = rns.IntLinear(n_in, n_out, [(slice(0, n_out), slice(0, n_in), Wi)], np.arange(n_out), max(l1, 1.0), bias)
    Y = rns.apply_linear(op, X, PRIMES, 2, n, threads=2, col_block=4)
    for li, q in enumerate(PRIMES):
        ref = _exact_linear(Wi, X[li], bias, q)
        assert np.array_equal(Y[li].astype(object), ref), f"prime {li}"


def test_reduce_handles_near_multiples_of_q():
    q = PRIMES[0]
    b, d = 20, 6
    # sums landing exactly on, just below and just above multiples of q (and negative ones)
    targets = [0, 1, q - 1, q, q + 1, 5 * q - 1, 5 * q, -1, -q, -q - 1, 2 ** 70 + 3, -(2 ** 70) - 5]
    G = np.zeros((len(targets), 3 * d))
    for i, v in enumerate(targets):
        # v = g0 + g1 * 2^b + g2 * 2^(2b) with |g| < 2^53
        g2 = v >> (2 * b)
        rest = v - (g2 << (2 * b))
        g1 = rest >> b
        g0 = rest - (g1 << b)
        G[i, :d], G[i, d:2 * d], G[i, 2 * d:] = g0, g1, g2
    out = np.empty((len(targets), d), dtype=np.uint64)
    rns._reduce_into(out, G, 3, b, d, q, None)
    assert [int(v) for v in out[:, 0]] == [v % q for v in targets]


def test_pool_sum_is_exact():
    rng = np.random.default_rng(1)
    C, H, W = 2, 5, 6
    q = PRIMES[0]
    X = rng.integers(q - 1000, q, (C * H * W, 3), dtype=np.uint64)
    pool = (C, H, W, 3, 2, 2, 2, 1, 0, 3, 3)
    Y = rns._pool_sum(X, pool, q)
    xp = np.zeros((C, H + 2, W, 3), dtype=object)
    xp[:, 1:1 + H] = X.reshape(C, H, W, 3).astype(object)
    for c in range(C):
        for oy in range(3):
            for ox in range(3):
                ref = xp[c, 2 * oy:2 * oy + 3, 2 * ox:2 * ox + 2].sum(axis=(0, 1)) % q
                assert [int(v) for v in Y[c * 9 + oy * 3 + ox]] == list(ref)


# ---------------------------------------------------------------------------------------------
# end to end against the reference executor
# ---------------------------------------------------------------------------------------------
def _graph_conv_square_fc(rng):
    """CryptoNets in miniature: conv with stride and one-sided padding, x², FC, x², FC."""
    return Graph((1, 9, 9), (
        Conv2d(_w(rng, (3, 1, 3, 3), 9), rng.normal(0, 0.1, 3), (2, 2), (0, 1, 0, 1)),
        Poly((0.0, 0.0, 1.0)), Flatten(),
        Linear(_w(rng, (8, 48), 48), rng.normal(0, 0.1, 8)),
        Poly((0.0, 0.0, 1.0)),
        Linear(_w(rng, (4, 8), 8), rng.normal(0, 0.1, 4))))


def test_end_to_end_conv_square_fc(ctx3):
    rng = np.random.default_rng(0)
    g = _graph_conv_square_fc(rng)
    x = rng.uniform(0, 1, (8, 1, 9, 9))
    y, out, stats = _run(ctx3, g, x)
    ref = run_reference(g, x)
    assert y.shape == (8, 4)
    assert np.abs(y - ref).max() <= 1e-2
    assert stats["plan"]["precision_bits"] > 12


def test_end_to_end_avgpool_and_general_polys(ctx3):
    """Two-channel conv with padding on all sides, avg-pool, a non-monic quadratic with linear and
    constant terms (its leading coefficient folds into the next layer), and an affine poly."""
    rng = np.random.default_rng(1)
    g = Graph((2, 8, 8), (
        Conv2d(_w(rng, (3, 2, 3, 3), 18), rng.normal(0, 0.1, 3), (1, 1), (1, 1, 1, 1)),
        AvgPool2d((2, 2), (2, 2)),
        Poly((0.1, 0.5, 0.25)), Flatten(),
        Linear(_w(rng, (6, 48), 48), rng.normal(0, 0.1, 6)),
        Poly((0.2, -1.5)),  # affine: folded into the Linear before it
        Poly((0.0, 1.0, 0.5)),
        Linear(_w(rng, (3, 6), 6), rng.normal(0, 0.1, 3))))
    x = rng.uniform(0, 1, (5, 2, 8, 8))
    y, _, _ = _run(ctx3, g, x)
    ref = run_reference(g, x)
    assert np.abs(y - ref).max() <= 1e-2


def test_end_to_end_cubic_poly_last(ctx_cubic):
    """A degree-3 poly that cannot be folded (it is the last layer): powers, relinearization and the
    coefficient multiplier all run in SEAL; avg-pool with padding (count_include_pad)."""
    rng = np.random.default_rng(2)
    g = Graph((1, 6, 6), (
        AvgPool2d((2, 2), (2, 2), (1, 1)), Flatten(),
        Linear(_w(rng, (5, 16), 16), rng.normal(0, 0.1, 5)),
        Poly((0.05, 0.6, 0.0, -0.3))))
    assert B.depth(g) == 3
    x = rng.uniform(0, 1, (7, 1, 6, 6))
    y, _, _ = _run(ctx_cubic, g, x)
    ref = run_reference(g, x)
    assert np.abs(y - ref).max() <= 1e-2


def test_outputs_are_small_rerandomized_and_unused_slots_masked(ctx3):
    rng = np.random.default_rng(3)
    g = _graph_conv_square_fc(rng)
    ctx, pub = ctx3
    x = rng.uniform(0, 1, (3, 1, 9, 9))
    blobs = B.client_encrypt(ctx, x)
    out1 = B.server_evaluate(pub, g, blobs, 3)
    out2 = B.server_evaluate(pub, g, blobs, 3)
    assert out1[0] != out2[0]  # fresh encryption of zero added each time
    np.testing.assert_allclose(B.client_decrypt(ctx, out1, 3, 4), B.client_decrypt(ctx, out2, 3, 4), atol=1e-3)
    kit = rns.get_kit(ctx)
    ct = rns.load_ciphertext(kit, out1[0], "out")
    assert ct.size() == 2 and ct.coeff_modulus_size() == 1  # relinearized, switched to the last prime
    # unmasked: the unused slots hold the model on the client's zero padding; masked: zeros
    full = B.client_decrypt(ctx, out1, kit.slots, 4)
    ref0 = run_reference(g, np.zeros((1, 1, 9, 9)))[0]
    np.testing.assert_allclose(full[3:6], np.tile(ref0, (3, 1)), atol=1e-2)
    masked = B.server_evaluate(pub, g, blobs, 3, mask_unused=True)
    fm = B.client_decrypt(ctx, masked, kit.slots, 4)
    assert np.abs(fm[3:]).max() < 1e-3
    np.testing.assert_allclose(fm[:3], run_reference(g, x), atol=1e-2)


def test_seeded_symmetric_upload_is_about_half():
    ctx = B.make_context(N, [60, 40, 40], 30)
    x = np.random.default_rng(4).uniform(0, 1, (2, 1, 2, 2))
    sym = B.client_encrypt(ctx, x)
    pub = B.public_copy(ctx)
    pk = B.client_encrypt(pub, x)  # no secret key: public-key encryption
    assert len(sym[0]) < 0.6 * len(pk[0])


# ---------------------------------------------------------------------------------------------
# interface, refusals, malformed input
# ---------------------------------------------------------------------------------------------
def test_depth_and_rotations():
    rng = np.random.default_rng(5)
    g = _graph_conv_square_fc(rng)
    assert B.depth(g) == 3
    assert B.rotation_steps(g) == []


@pytest.mark.parametrize("bad", [ReLU(), MaxPool2d((2, 2), (2, 2))])
def test_relu_and_maxpool_are_refused_by_name(bad):
    layers = (Conv2d(np.ones((1, 1, 2, 2)), np.zeros(1)), bad, Flatten())
    g = Graph((1, 6, 6), layers, names=("c", "the_bad_one", "f"))
    for fn in (B.depth, B.rotation_steps):
        with pytest.raises(UnsupportedLayerError, match="the_bad_one"):
            fn(g)
    ctx = B.make_context(N, [60, 40, 40], 30)
    with pytest.raises(UnsupportedLayerError, match="the_bad_one"):
        B.server_evaluate(B.public_copy(ctx), g, [b""] * 36, 1)


def test_malformed_and_mismatched_blobs(ctx3):
    rng = np.random.default_rng(6)
    g = _graph_conv_square_fc(rng)
    ctx, pub = ctx3
    x = rng.uniform(0, 1, (2, 1, 9, 9))
    blobs = B.client_encrypt(ctx, x)
    with pytest.raises(ShapeError):
        B.server_evaluate(pub, g, blobs[:-1], 2)
    with pytest.raises(ShapeError):
        B.server_evaluate(pub, g, blobs, 0)
    with pytest.raises(ShapeError):
        B.server_evaluate(pub, g, blobs, 10 ** 6)
    for bad in (b"", b"\x00" * 64, blobs[0][:len(blobs[0]) // 2], blobs[0][:20] + b"\xff" * (len(blobs[0]) - 20),
                "not bytes"):
        with pytest.raises(ProtocolError):
            B.server_evaluate(pub, g, [bad] + blobs[1:], 2)
    # a ciphertext from other parameters
    other = B.make_context(N, [60, 40, 40], 30)
    foreign = B.client_encrypt(other, x[:, :, :1, :1])[0]
    with pytest.raises(ProtocolError):
        B.server_evaluate(pub, g, [foreign] + blobs[1:], 2)
    # inputs at different scales
    ctx_b = ctx.copy()
    ctx_b.global_scale = 2.0 ** 27
    odd = B.client_encrypt(ctx_b, x[:, :, :1, :1])[0]
    with pytest.raises(ProtocolError):
        B.server_evaluate(pub, g, [odd] + blobs[1:], 2)
    out = B.server_evaluate(pub, g, blobs, 2)
    with pytest.raises(ShapeError):
        B.client_decrypt(ctx, out[:3], 2, 4)
    with pytest.raises(ProtocolError):
        B.client_decrypt(ctx, [b"junk"] + out[1:], 2, 4)
    with pytest.raises(ShapeError):
        B.client_encrypt(ctx, np.zeros((rns.get_kit(ctx).slots + 1, 1, 9, 9)))
    with pytest.raises(ShapeError):
        B.client_encrypt(ctx, np.full((1, 1, 9, 9), np.nan))
    with pytest.raises(ParameterError):
        B.client_decrypt(pub, out, 2, 4)  # no secret key


def test_planner_refuses_parameters_too_small():
    rng = np.random.default_rng(7)
    g = _graph_conv_square_fc(rng)
    st = bp.normalize(g)
    bp.set_bounds(st, 1.0)
    primes = B._primes(N, [30, 20, 30])
    with pytest.raises(ParameterError):
        bp.plan_scales(st, primes, len(primes), 25.0, N)


# ---------------------------------------------------------------------------------------------
# the second-core helper process
# ---------------------------------------------------------------------------------------------
bpar = importlib.import_module("privinfer.protocols.he.batch_par")


def test_helper_and_in_process_paths_agree(ctx3, monkeypatch):
    rng = np.random.default_rng(8)
    g = _graph_conv_square_fc(rng)
    ctx, pub = ctx3
    x = rng.uniform(0, 1, (4, 1, 9, 9))
    blobs = B.client_encrypt(ctx, x)
    s_helper, s_alone = {}, {}
    with_helper = B.client_decrypt(ctx, B.server_evaluate(pub, g, blobs, 4, stats=s_helper), 4, 4)
    monkeypatch.setenv("PRIVINFER_HE_BATCH_HELPER", "0")
    alone = B.client_decrypt(ctx, B.server_evaluate(pub, g, blobs, 4, stats=s_alone), 4, 4)
    one_thread = B.client_decrypt(ctx, B.server_evaluate(pub, g, blobs, 4, threads=1), 4, 4)
    assert s_helper["timings"]["helper"] and not s_alone["timings"]["helper"]
    np.testing.assert_allclose(with_helper, alone, atol=1e-4)
    np.testing.assert_allclose(one_thread, alone, atol=1e-4)


def test_helper_reports_bad_blobs_and_is_replaced_when_dead(ctx3):
    rng = np.random.default_rng(9)
    g = _graph_conv_square_fc(rng)
    ctx, pub = ctx3
    x = rng.uniform(0, 1, (2, 1, 9, 9))
    blobs = B.client_encrypt(ctx, x)
    bad = blobs[:-1] + [blobs[-1][:100] + b"\x00" * (len(blobs[-1]) - 100)]  # the helper's half
    with pytest.raises(ProtocolError, match="input ciphertext 80"):
        B.server_evaluate(pub, g, bad, 2)
    h = importlib.import_module("privinfer.protocols.he.batch_helper").acquire_helper()
    assert h is not None
    h.lock.release()
    h.proc.kill()
    h.proc.wait()
    stats = {}
    y = B.client_decrypt(ctx, B.server_evaluate(pub, g, blobs, 2, stats=stats), 2, 4)
    assert stats["timings"]["helper"]  # a new helper was started
    assert np.abs(y - run_reference(g, x)).max() <= 1e-2


def test_calibrated_bounds_give_more_precision(ctx3):
    rng = np.random.default_rng(10)
    g = _graph_conv_square_fc(rng)
    ctx, pub = ctx3
    x = rng.uniform(0, 1, (6, 1, 9, 9))
    _, _, s_int = _run(ctx3, g, x)
    y, _, s_cal = _run(ctx3, g, x, calibration=rng.uniform(0, 1, (32, 1, 9, 9)))
    assert s_cal["plan"]["precision_bits"] >= s_int["plan"]["precision_bits"]
    assert np.abs(y - run_reference(g, x)).max() <= 1e-2
    with pytest.raises(ShapeError):
        B.server_evaluate(pub, g, B.client_encrypt(ctx, x), 6, calibration=np.zeros((2, 3)))
