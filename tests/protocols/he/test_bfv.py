"""BFV (privinfer/protocols/he/bfv.py, bfv_eval.py): parameters, masks, flooding, and packed evaluation
against plain integer arithmetic."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy import stats

from privinfer.errors import ParameterError, ProtocolError
from privinfer.model.ir import Conv2d, Flatten, Graph, Linear
from privinfer.protocols.he.bfv import COEFF_BITS, N_DEFAULT, BFVContext, BFVParams, choose_params, uniform_mod
from privinfer.protocols.he.bfv_eval import BFVSegment


def test_params_are_the_audited_set_and_t_is_a_batching_prime():
    p = choose_params(2.0 ** 35)
    assert p.N == N_DEFAULT and tuple(p.coeff_bits) == COEFF_BITS and (p.t - 1) % (2 * p.N) == 0
    assert p.t > 2 * 2.0 ** 35
    assert BFVParams.from_json(p.to_json()) == p
    with pytest.raises(ParameterError):
        BFVParams(4096, COEFF_BITS, p.t).validate()
    with pytest.raises(ParameterError, match="plaintext modulus"):
        choose_params(2.0 ** 45)
    with pytest.raises(ProtocolError):
        BFVParams.from_json({"scheme": "ckks"})


def test_uniform_mod_is_uniform_and_in_range():
    t = 1_000_003
    r = uniform_mod(t, 200_000)
    assert r.min() >= 0 and r.max() < t
    counts = np.bincount(r % 97, minlength=97)
    assert stats.chisquare(counts).pvalue > 1e-4
    hi = np.bincount((r * 64) // t, minlength=64)  # coarse position in [0, t): no modulo bias at the top
    assert stats.chisquare(hi).pvalue > 1e-4


def _conv_graph(seed=0):
    rng = np.random.default_rng(seed)
    conv = Conv2d(rng.normal(size=(3, 2, 3, 3)) * 0.3, rng.normal(size=3) * 0.1, stride=(1, 1), padding=(1, 1, 1, 1))
    lin = Linear(rng.normal(size=(4, 3 * 6 * 6)) * 0.1, rng.normal(size=4) * 0.1)
    return Graph((2, 6, 6), [conv, Flatten(), lin], input_range=(0.0, 1.0))


def _keys(seg):
    cli = BFVContext.create(seg.params, seg.plan.rotation_steps)
    srv = seg.ctx.keyed()
    srv.load_public(cli.public_blobs(), seg.plan.rotation_steps)
    return cli, srv


@pytest.mark.parametrize("stop", [1, 3])
def test_segment_matches_integer_arithmetic_exactly(stop):
    g = _conv_graph()
    seg = BFVSegment(g, 0, stop)
    cli, srv = _keys(seg)
    x = np.random.default_rng(1).uniform(0, 1, size=(2, 6, 6))
    xi = np.rint(x.reshape(-1) * 2 ** 16)
    cts = [srv.ct_from_bytes(cli.encrypt(v), level=0) for v in seg.input_vectors(xi)]
    outs = seg.evaluate(srv, cts)
    blobs = [srv.ct_to_bytes(srv.finish(o, seg.noise_bits, seg.out_level)) for o in outs]
    dec = np.stack([cli.decrypt(b) for b in blobs])
    ci, si = seg.positions
    y = cli.centered(dec[ci, si].sum(axis=1) % cli.t)
    A, b = seg.program.ops[0].A, seg.program.ops[0].b
    np.testing.assert_array_equal(y, (A @ xi + b).astype(np.int64))  # exact: BFV computes mod t
    ref = g.slice(0, stop)
    from privinfer.model.reference import run_reference
    np.testing.assert_allclose(y / 2.0 ** (16 + seg.weight_bits), run_reference(ref, x[None])[0].reshape(-1), atol=2e-3)
    # the reply was switched down to the lowest level that decrypts: one prime, a quarter of a fresh ciphertext
    assert len(blobs[0]) < srv.max_ct_bytes() / 2
    # the flood is as large as decryption allows; the circuit privacy it buys is stated against the noise bound
    assert seg.circuit_bits == max(0.0, round(srv.flood_bits() - seg.noise_bits - 13, 1))
    assert seg.noise_bits > 18 + 13 + np.log2(seg.params.t)  # fresh error x N t at least


def test_refuses_nonlinear_segments_and_unknown_ranges():
    from privinfer.errors import UnsupportedLayerError
    from privinfer.model.ir import ReLU
    g = Graph((4,), [Linear(np.eye(4), np.zeros(4)), ReLU()], input_range=(0.0, 1.0))
    with pytest.raises(UnsupportedLayerError):
        BFVSegment(g, 0, 2)
    with pytest.raises(ParameterError, match="input_range"):
        BFVSegment(g.with_input_range(None), 0, 1)


def test_received_ciphertexts_are_checked():
    seg = BFVSegment(_conv_graph(), 0, 1)
    cli, srv = _keys(seg)
    with pytest.raises(ProtocolError):
        srv.ct_from_bytes(b"\x00" * 64)
    with pytest.raises(ProtocolError):
        srv.ct_from_bytes(b"\x00" * (srv.max_ct_bytes() + 1))


def test_the_flood_lands_in_the_ciphertext():
    """Circuit privacy rests on `finish` adding ~2^beta of noise: check it through the decryption noise budget
    (review finding: every other test only looks at decrypted slots, which a no-op flood would also pass)."""
    import math
    params = choose_params(2.0 ** 20)
    ctx = BFVContext.create(params)
    v = uniform_mod(params.t, params.N)
    ct = ctx.ct_from_bytes(ctx.encrypt(v.astype(np.float64)), level=0)
    top = ctx.parms_ids[0]
    before = ctx.decryptor.invariant_noise_budget(ct)
    ctx.finish(ct, noise_bits=0.0, level=0)  # stay at the top level: the budget compares like for like
    after = ctx.decryptor.invariant_noise_budget(ct)
    qbits = sum(math.log2(q) for q in ctx.level_primes[0])
    noise = qbits - math.log2(params.t) - after - 1  # log2 |e| after the flood
    assert ct.parms_id() == top and before - after >= ctx.flood_bits() - 25
    assert noise >= ctx.flood_bits() - 2
    assert np.array_equal(ctx.decrypt(ctx.ct_to_bytes(ct)) % params.t, v % params.t)  # and still decrypts


def test_streamed_evaluation_in_any_input_order_equals_the_whole_evaluation():
    """`BFVSegment.stream` (the server multiplies each input ciphertext as it arrives) gives the exact result
    of `evaluate`, whatever order the inputs come in; an input given twice, or one missing, is refused."""
    rng = np.random.default_rng(3)
    g = Graph((8, 12, 12), [Conv2d(rng.normal(size=(8, 8, 5, 5)) * 0.05, rng.normal(size=8) * 0.1, stride=(1, 1),
                                   padding=(0, 0, 0, 0))], input_range=(0.0, 1.0))
    seg = BFVSegment(g, 0, 1)
    cli, srv = _keys(seg)
    xi = np.rint(rng.uniform(0, 1, size=8 * 12 * 12) * 2 ** 16)
    blobs = [cli.encrypt(v) for v in seg.input_vectors(xi)]
    assert len(blobs) == 4  # a lane-packed plan with several input ciphertexts
    ci, si = seg.positions

    def decrypt(outs):
        dec = np.stack([cli.decrypt(srv.ct_to_bytes(srv.finish(o, seg.noise_bits, seg.out_level))) for o in outs])
        return cli.centered(dec[ci, si].sum(axis=1) % cli.t)

    whole = decrypt(seg.evaluate(srv, [srv.ct_from_bytes(b, level=0) for b in blobs]))
    ev = seg.stream(srv)
    for i in reversed(range(len(blobs))):
        ev.add(i, srv.ct_from_bytes(blobs[i], level=0))
    np.testing.assert_array_equal(decrypt(ev.result()), whole)
    A, b = seg.program.ops[0].A, seg.program.ops[0].b
    np.testing.assert_array_equal(whole, (A @ xi + b).astype(np.int64))
    from privinfer.errors import ShapeError
    ev = seg.stream(srv)
    ev.add(0, srv.ct_from_bytes(blobs[0], level=0))
    with pytest.raises(ShapeError):
        ev.add(0, srv.ct_from_bytes(blobs[0], level=0))
    with pytest.raises(ShapeError):
        ev.result()


def test_a_pad_made_ahead_finishes_exactly_like_one_made_on_the_spot():
    """`BFVContext.pad` (fresh encryption of zero + flood, made before the result exists) then `finish`
    decrypts to the same slots as `finish` alone; a pad at another level is refused."""
    g = _conv_graph()
    seg = BFVSegment(g, 0, 1)
    cli, srv = _keys(seg)
    v = uniform_mod(cli.t, cli.N)
    pad = srv.pad(seg.noise_bits)
    out = srv.finish(srv.ct_from_bytes(cli.encrypt(v), level=0), seg.noise_bits, seg.out_level, pad)
    np.testing.assert_array_equal(cli.decrypt(srv.ct_to_bytes(out)), v)
    low = srv.pad(seg.noise_bits, level=1)
    with pytest.raises(ParameterError, match="level"):
        srv.finish(srv.ct_from_bytes(cli.encrypt(v), level=0), seg.noise_bits, seg.out_level, low)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 200), st.integers(0, 2 ** 31), st.sampled_from([(1 << 60) - 93, (1 << 59) - 55, 12289, 3]))
def test_flood_residues_equal_python_integer_arithmetic(bits, seed, modulus):
    """The flood's residues mod each prime, computed in uint64 words (Shoup multiplication), are exactly those
    of the Python integer E = sum_k w_k 2^(64 k) - 2^bits, extremes included; the top word holds only the bits
    it should."""
    from privinfer.protocols.he.bfv import _flood_limbs, flood_residues
    rng = np.random.default_rng(seed)
    limbs = _flood_limbs(bits, 64)
    top = (bits + 1) - 64 * (len(limbs) - 1)
    top_mask = np.uint64((1 << top) - 1) if top < 64 else np.uint64(np.iinfo(np.uint64).max)
    assert np.all(limbs[-1] <= top_mask)
    limbs[:, 0] = 0  # U = 0: E = -2^bits
    limbs[:, 1] = np.iinfo(np.uint64).max  # U = 2^(bits+1) - 1
    limbs[-1, 1] = top_mask
    limbs[:, 2:6] = rng.integers(0, 2 ** 64, size=(len(limbs), 4), dtype=np.uint64)
    limbs[-1, 2:6] &= top_mask
    moduli = [1152921504606830593, 1152921504606748673, modulus]
    got = flood_residues(limbs, bits, moduli)
    for j in range(limbs.shape[1]):
        U = sum(int(limbs[k, j]) << (64 * k) for k in range(len(limbs)))
        assert 0 <= U < 1 << (bits + 1)
        for q, r in zip(moduli, got):
            assert int(r[j]) == (U - (1 << bits)) % q
