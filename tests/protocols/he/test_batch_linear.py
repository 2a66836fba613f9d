"""The batch engine's exact integer kernels (privinfer.protocols.he.batch_linear) against Python integers:
the limb reduction with and without limb 0's share of the quotient, and block-sparse maps whose block order
differs from the output order (convolutions), over random column blocks."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as hst

from privinfer.errors import ParameterError

pytest.importorskip("tenseal")
bl = importlib.import_module("privinfer.protocols.he.batch_linear")
bst = importlib.import_module("privinfer.protocols.he.batch_stages")
bparams = importlib.import_module("privinfer.protocols.he.batch_params")

PRIMES = bparams.primes_of(8192, [60, 59, 50, 40, 24, 30])  # real NTT primes of several widths


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(qi=hst.integers(0, len(PRIMES) - 1), t_count=hst.integers(1, 3), l1_bits=hst.integers(0, 20),
       rows=hst.integers(1, 70), d=hst.integers(1, 9), with_bias=hst.booleans(), seed=hst.integers(0, 2 ** 32 - 1))
def test_reduce_matches_python_integers(qi, t_count, l1_bits, rows, d, with_bias, seed):
    """Products bounded as apply_linear bounds them (|G| <= l1 (2^b - 1) < 2^53): every residue exact, with
    the bound passed (limb 0 left out of the quotient when the bound allows) and without it."""
    q = PRIMES[qi]
    b = min(bl.limb_bits(2.0 ** l1_bits), -(-q.bit_length() // t_count) + 3)
    bound = (2 ** l1_bits) * ((1 << b) - 1)
    rng = np.random.default_rng(seed)
    G = rng.integers(-bound, bound + 1, (rows, t_count * d), dtype=np.int64)
    # extremes and near multiples of q in a few rows
    G[0] = bound
    if rows > 1:
        G[1] = -bound
    if rows > 2:
        G[2, :d] = q % (1 << b) if t_count > 1 else min(q, bound)
    Gf = G.astype(np.float64)
    bias = rng.integers(0, q, rows, dtype=np.uint64) if with_bias else None
    ref = [[(sum(int(G[r, t * d + c]) << (b * t) for t in range(t_count))
             + (int(bias[r]) if bias is not None else 0)) % q for c in range(d)] for r in range(rows)]
    for g_bound in (None, float(bound)):
        out = np.empty((rows, d), dtype=np.uint64)
        bl._reduce_into(out, Gf, t_count, b, d, q, bias, g_bound=g_bound)
        assert out.astype(object).tolist() == ref


def test_reduce_with_bound_near_quotient_boundaries():
    """Sums whose quotient sits just below/above an integer while limb 0 pulls the other way: the case the
    bound-skipping quotient gets wrong by one and the fix-up must repair (both signs)."""
    q = PRIMES[0]
    b, d = 30, 1
    cases = []
    for k in (1, 2, 12345, 2 ** 22):
        for delta in (-3, -1, 0, 1, 3, 2 ** 20, -(2 ** 20)):
            v = k * q + delta  # target sum
            g1 = v >> b
            g0 = v - (g1 << b)  # in [0, 2^b)
            cases.append((g0, g1))
            cases.append((g0 - (1 << b) + 1, g1 + 1))  # same value, limb 0 negative
            cases.append((g0 + (1 << b), g1 - 1))  # limb 0 above 2^b
    G = np.array([[g0, g1] for g0, g1 in cases], dtype=np.float64)
    out = np.empty((len(cases), d), dtype=np.uint64)
    bl._reduce_into(out, G, 2, b, d, q, None, g_bound=float(2 ** 31))
    assert [int(v) for v in out[:, 0]] == [(g0 + (g1 << b)) % q for g0, g1 in cases]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cin=hst.integers(1, 2), cout=hst.integers(1, 4), h=hst.integers(3, 7), w=hst.integers(3, 7),
       k=hst.integers(1, 3), s=hst.integers(1, 2), wbits=hst.integers(1, 16), target=hst.sampled_from([1, 8, 64]),
       col_block=hst.sampled_from([1, 2, 4, 8]), with_bias=hst.booleans(), seed=hst.integers(0, 2 ** 16))
def test_conv_operator_is_exact_mod_every_prime(cin, cout, h, w, k, s, wbits, target, col_block, with_bias, seed):
    """A convolution's block-sparse operator (block order != output order) through apply_linear, both
    threads, any column split: equal to the dense integer map mod every prime, in output order."""
    rng = np.random.default_rng(seed)
    W = rng.integers(-(2 ** wbits), 2 ** wbits + 1, (cout, cin, k, k)).astype(np.float64)
    blocks, perm = bst.conv_blocks(W, (s, s), (0, 1, 0, 1), (cin, h, w), target)
    n_in, n_out = cin * h * w, len(perm)
    dense = np.zeros((n_out, n_in), dtype=np.int64)
    for rows, insel, Wb in blocks:
        cols = np.arange(n_in)[insel]
        dense[perm[rows][:, None], cols[None, :]] += Wb.astype(np.int64)
    l1 = float(max(np.abs(b[2]).sum(axis=1).max() for b in blocks))
    bias = np.array([int(v) for v in rng.integers(-(2 ** 62), 2 ** 62, n_out)], dtype=object) if with_bias else None
    op = bl.IntLinear(n_in, n_out, blocks, perm, max(l1, 1.0), bias)
    n = 4
    X = np.stack([rng.integers(0, q, (n_in, 2 * n), dtype=np.uint64) for q in PRIMES])
    for li, q in enumerate(PRIMES):
        X[li, :, 1] = q - 1
    Y = bl.apply_linear(op, X, PRIMES, 2, n, threads=2, col_block=col_block)
    D = dense.astype(object)
    for li, q in enumerate(PRIMES):
        ref = D.dot(X[li].astype(object))
        if bias is not None:
            ref[:, :n] += bias[:, None]
        assert (Y[li].astype(object) == ref % q).all(), f"prime {li}"


def test_block_with_out_of_range_input_is_refused():
    """The block gathers clip instead of raising (no defensive copies of the gathered rows), so apply_linear
    checks every block's input indices first: a stray index is a ParameterError, never a clamped, wrong
    product. (Before the check numpy raised a bare IndexError from inside a worker thread.)"""
    q = PRIMES[0]
    X = np.zeros((1, 3, 2 * 4), dtype=np.uint64)
    for bad in ([0, 3], [-1, 1]):
        op = bl.IntLinear(3, 1, [(slice(0, 1), np.array(bad), np.ones((1, 2)))], np.arange(1), 2.0, None)
        with pytest.raises(ParameterError, match="outside"):
            bl.apply_linear(op, X, [q], 2, 4, threads=1)
    ok = bl.IntLinear(3, 1, [(slice(0, 1), np.array([0, 2]), np.ones((1, 2)))], np.arange(1), 2.0, None)
    X[0, 0], X[0, 2] = 5, q - 1
    assert bl.apply_linear(ok, X, [q], 2, 4, threads=1)[0, 0].tolist() == [4] * 8
