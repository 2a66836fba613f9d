"""Seeded secret-key uploads (privinfer.protocols.he.seeded): round trips at every level, half the bytes of a
full ciphertext, and typed refusals of anything malformed, oversize, at the wrong level or scale."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from privinfer.errors import ParameterError, ProtocolError

seal = pytest.importorskip("tenseal.sealapi")
S = importlib.import_module("privinfer.protocols.he.seeded")

N = 4096
BITS = [40, 20, 20, 29]  # 3 data levels, 109 bits (128-bit security at N=4096)
SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                           HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def keys():
    parms = seal.EncryptionParameters(seal.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(N)
    parms.set_coeff_modulus(seal.CoeffModulus.Create(N, BITS))
    sc = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    kg = seal.KeyGenerator(sc)
    sk = kg.secret_key()
    pk = seal.PublicKey()
    kg.create_public_key(pk)
    enc = seal.CKKSEncoder(sc)
    return sc, sk, pk, enc, S.SeededEncryptor(sc, sk, enc)


def _decrypt(sc, sk, enc, ct):
    pt = seal.Plaintext()
    seal.Decryptor(sc, sk).decrypt(ct, pt)
    return np.asarray(enc.decode_double(pt))


@SETTINGS
@given(level=st.integers(1, 3), n=st.integers(1, N // 2), seed=st.integers(0, 2**32 - 1),
       mag=st.sampled_from([1e-3, 1.0, 50.0]))
def test_round_trip_any_level(keys, level, n, seed, mag):
    sc, sk, _, enc, senc = keys
    v = np.random.default_rng(seed).uniform(-mag, mag, n)
    scale = 2.0 ** 25  # q0 has 40 bits: room for |v| <= 50 at this scale
    blob = senc.encrypt(v, scale, n_primes=level)
    assert len(blob) <= S.max_bytes(N, level, seeded=True)
    ct = S.load(sc, blob, n_primes=level, scale=scale)
    assert ct.coeff_modulus_size() == level
    d = _decrypt(sc, sk, enc, ct)
    assert np.abs(d[:n] - v).max() < 1e-4  # fresh-encryption noise (~2^10) at a 2^25 scale
    assert np.abs(d[n:]).max(initial=0.0) < 1e-4


def test_seeded_is_half_a_full_ciphertext(keys):
    sc, sk, pk, enc, senc = keys
    v = np.random.default_rng(1).uniform(-1, 1, N // 2)
    blob = senc.encrypt(v, 2.0 ** 20, n_primes=3)
    ct = S.load(sc, blob, n_primes=3, scale=2.0 ** 20)
    full = S.save_bytes(ct)  # the expanded (c0, c1) pair
    assert len(blob) < 0.55 * len(full)
    # a full ciphertext is refused where a seeded one is expected (oversize), accepted when allowed
    with pytest.raises(ProtocolError, match="limit"):
        S.load(sc, full, n_primes=3)
    S.load(sc, full, n_primes=3, seeded=False)
    # a lower level is smaller still
    assert len(senc.encrypt(v, 2.0 ** 20, n_primes=2)) < 0.75 * len(blob)


def test_refusals(keys):
    sc, sk, pk, enc, senc = keys
    blob = senc.encrypt(np.ones(8), 2.0 ** 20, n_primes=2)
    with pytest.raises(ProtocolError, match="level"):
        S.load(sc, blob, n_primes=3)
    with pytest.raises(ProtocolError, match="scale"):
        S.load(sc, blob, n_primes=2, scale=2.0 ** 21)
    with pytest.raises(ProtocolError, match="expected bytes"):
        S.load(sc, "text", n_primes=2)
    for bad in (b"", blob[:10], blob[:-1], blob + b"\0", b"\x5e\xa1" + blob[2:3] + b"\x99" + blob[4:],
                np.random.default_rng(0).bytes(len(blob))):
        with pytest.raises(ProtocolError):
            S.load(sc, bad, n_primes=2)
    # a flipped byte in the body: SEAL rejects it or it loads as some other ciphertext, never a crash
    body = bytearray(blob)
    body[len(body) // 2] ^= 0xFF
    try:
        S.load(sc, bytes(body), n_primes=2)
    except ProtocolError:
        pass
    # a public-key (size 3 after a square) ciphertext is not fresh
    ct = seal.Ciphertext()
    pt = seal.Plaintext()
    enc.encode([1.0], S.parms_id_for(sc, 2), 2.0 ** 20, pt)
    seal.Encryptor(sc, pk).encrypt(pt, ct)
    sq = seal.Ciphertext()
    seal.Evaluator(sc).square(ct, sq)
    with pytest.raises(ProtocolError, match="fresh"):
        S.load(sc, S.save_bytes(sq), n_primes=2, seeded=False)
    with pytest.raises(ParameterError):
        S.SeededEncryptor(sc, None)
    with pytest.raises(ParameterError):
        senc.encrypt(np.ones(N), 2.0 ** 20)
    with pytest.raises(ParameterError):
        senc.encrypt([np.nan], 2.0 ** 20)
    with pytest.raises(ParameterError):
        S.parms_id_for(sc, 7)


def test_thread_scratch_files_are_removed_with_their_thread(keys):
    import os
    import threading

    from privinfer.protocols.he.scratch import private_dir
    sc, sk, _, enc, senc = keys
    before = set(os.listdir(private_dir()))
    blobs = []
    t = threading.Thread(target=lambda: blobs.append(senc.encrypt(np.ones(4), 2.0 ** 20)))
    t.start()
    t.join()
    assert blobs and S.load(sc, blobs[0], n_primes=3, scale=2.0 ** 20).size() == 2
    assert set(os.listdir(private_dir())) - before == set()
