"""Streamed batch queries (privinfer.protocols.he.batch_stream): the chunk plan covers every ciphertext once,
in wire order; the server's reader hands them over as they arrive and refuses miscounted frames; a streamed
query through the real protocol (several frames, two slot groups) matches the reference executor."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import privinfer
from privinfer.errors import ProtocolError
from privinfer.model.ir import Graph, Linear, Poly
from privinfer.model.reference import run_reference
from privinfer.transport import channel_pair

pytest.importorskip("tenseal")
S = importlib.import_module("privinfer.protocols.he.batch_stream")


@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 5000), slots=st.sampled_from([2048, 4096]), n_in=st.integers(1, 900),
       chunk=st.integers(1, 200))
def test_chunk_plan_covers_every_ciphertext_once_in_order(batch, slots, n_in, chunk):
    plan = S.chunk_plan(batch, slots, n_in, chunk)
    groups = -(-batch // slots)
    flat = [(g, p) for g, lo, hi in plan for p in range(lo, hi)]
    assert flat == [(g, p) for g in range(groups) for p in range(n_in)]
    assert all(0 < hi - lo <= max(chunk, 1) for _, lo, hi in plan)


def test_reader_yields_pieces_and_refuses_miscounted_frames():
    a, b = channel_pair(timeout=5)
    with a, b:
        for blobs in ([b"x"] * 3, [b"y"] * 4):
            a.send_blobs(blobs)
        r = S.ChunkReader(b, 2, 7)
        got = [list(p) for p in r.take(5)]
        assert got == [[b"x"] * 3, [b"y"] * 2]
        assert r.all() == [b"y"] * 2
        r.finish(5)
        with pytest.raises(ProtocolError):
            list(r.take(1))  # nothing left
    for frames, chunks, total in (([[b"x"] * 3], 1, 2), ([[b"x"], []], 2, 2), ([[b"x"] * 2, [b"x"]], 2, 2)):
        a, b = channel_pair(timeout=5)
        with a, b:
            for f in frames:
                a.send_blobs(f)
            r = S.ChunkReader(b, chunks, total)
            with pytest.raises(ProtocolError, match="frame"):
                r.all()
    a, b = channel_pair(timeout=5)
    with a, b:
        for bad in (0, 5, True, "2"):
            with pytest.raises(ProtocolError, match="chunks"):
                S.ChunkReader(b, bad, 4)


def test_streamed_query_two_groups_matches_reference(monkeypatch):
    monkeypatch.setattr(S, "CHUNK_CTS", 7)  # 24 inputs: 4 frames per slot group
    rng = np.random.default_rng(3)
    g = Graph((24,), (Linear(rng.normal(0, 0.3, (6, 24)), rng.normal(0, 0.1, 6)), Poly((0.0, 0.0, 1.0)),
                      Linear(rng.normal(0, 0.3, (3, 6)), rng.normal(0, 0.1, 3))))
    with privinfer.PrivateSession(g, "he", spawn="thread", packing="batch", circuit_privacy="fast") as s:
        slots = s.client.params.slots
        x = rng.uniform(0, 1, (slots + 5, 24))  # a full group and a partial one
        assert s.client.query_meta(x[:1])["chunks"] == 4
        s.client.answered -= 1
        assert s.client.streamed  # the server's WELCOME offers streaming
        got = s.infer(x)
        assert s.stats.last.rounds == 1
        s.client.streamed = False  # as against an older server: one frame, which this server still takes
        one = s.infer(x[:9])
    assert np.abs(one - run_reference(g, x[:9])).max() <= 1e-2
    ref = run_reference(g, x)
    assert np.abs(got - ref).max() <= 1e-2
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99


def test_client_encryptor_splits_with_its_helper_and_falls_back():
    B = importlib.import_module("privinfer.protocols.he.batch")
    H = importlib.import_module("privinfer.protocols.he.batch_helper")
    ctx = B.make_context(8192, [60, 40, 40], 25)
    flat = np.random.default_rng(5).uniform(-1, 1, (100, 40))
    enc = H.ClientEncryptor(ctx)
    try:
        assert enc.helper is not None  # a free helper holds half of each chunk
        enc.set_group(flat)
        blobs = enc.encrypt(3, 37)
        enc.helper.proc.kill()  # a dead helper: the next chunk is done here
        enc.helper.proc.wait()
        blobs += enc.encrypt(37, 40)
        assert enc.helper is None
    finally:
        enc.close()
    assert len(blobs) == 37
    dec = B.client_decrypt(ctx, blobs, 100, 37)
    assert np.abs(dec - flat[:, 3:40]).max() < 1e-4


def test_a_bad_chunk_ends_the_query_with_the_servers_typed_error(monkeypatch):
    from privinfer.errors import PeerError
    monkeypatch.setattr(S, "CHUNK_CTS", 7)
    rng = np.random.default_rng(4)
    g = Graph((24,), (Linear(rng.normal(0, 0.3, (3, 24)), rng.normal(0, 0.1, 3)),))
    orig = S.encrypt_positions

    def tampered(context, flat, lo, hi, scale=None):
        out = orig(context, flat, lo, hi, scale)
        return [b[:200] + bytes(len(b) - 200) for b in out] if lo == 0 else out
    monkeypatch.setattr(S, "encrypt_positions", tampered)
    monkeypatch.setenv("PRIVINFER_HE_BATCH_HELPER", "0")  # every ciphertext through the patched function
    with privinfer.PrivateSession(g, "he", spawn="thread", packing="batch", circuit_privacy="fast") as s:
        with pytest.raises(PeerError, match="input ciphertext 0"):
            s.infer(rng.uniform(0, 1, (3, 24)))
