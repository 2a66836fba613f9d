"""What runs ahead in a hybrid query, and that it stays correct and single-use:

* the 2PC offline phase (dealer + both parties' tuple generation) is started by `prepare` and collected right
  before the first ss segment, so it runs while the HE segment before it is evaluated (order of events, no
  timing assertions);
* a BFV segment's pads (fresh encryption of zero + flood + mask) are made ahead, serve one query once, and
  unmasking plaintexts made for another mask are not used;
* input ciphertexts come one per frame (the server works on each as it arrives); anything else is refused.
"""
import socket
import threading
import time

import numpy as np
import pytest

from privinfer import PrivateSession
from privinfer.errors import ShapeError
from privinfer.model.reference import run_reference
from privinfer.protocols.convert import bfv as conv
from privinfer.protocols.engine import Kind
from privinfer.protocols.hybrid import bfv_seg, ss_seg
from privinfer.protocols.hybrid.steps import BFVSegmentStep
from privinfer.protocols.ss import sides
from privinfer.protocols.ss.dealer import LocalDealer
from privinfer.transport import Channel
from privinfer.zoo import load_dataset, load_model

OPTS = {"dealer": "local", "mpc_timeout": 30.0}


def _spy(monkeypatch, cls, name, log, tag, result=None):
    fn = getattr(cls, name)

    def inner(*a, **k):
        log.append(tag + ">")
        out = fn(*a, **k)
        log.append("<" + tag)
        if result is not None:
            result.append(out)
        return out
    monkeypatch.setattr(cls, name, inner)


def test_offline_phase_runs_while_the_first_he_segment_is_evaluated(monkeypatch):
    """Server side, per query: the dealer's request is sent (offline start) before the BFV segment runs and
    collected after it, before the first ss segment; the dealer's answer is awaited (and handed to the party)
    by a thread of its own, not by the collect, so it overlaps the BFV segment too; the logits stay the
    reference's. The same image twice gets two different client shares of the BFV result: no pad serves two
    queries."""
    log, shares, waiters = [], [], []
    _spy(monkeypatch, sides._SSServer, "_offline_start", log, "start")
    _spy(monkeypatch, sides._SSServer, "_offline_collect", log, "collect")
    _spy(monkeypatch, LocalDealer, "start", log, "dealer_start")
    _spy(monkeypatch, LocalDealer, "finish", log, "dealer_wait")
    wait = LocalDealer.finish
    # a slow dealer: its answer takes 0.5 s more, so a wait that blocked the query would end before the BFV
    # segment starts (review: without the delay, a join of the fill thread before the segment went unnoticed)
    monkeypatch.setattr(LocalDealer, "finish", lambda self, *a: (waiters.append(threading.current_thread().name),
                                                                 time.sleep(0.5), wait(self, *a))[2])
    _spy(monkeypatch, bfv_seg.BFVSegmentServer, "run", log, "bfv")
    _spy(monkeypatch, ss_seg.SSSegmentsServer, "segment", log, "ss")
    _spy(monkeypatch, bfv_seg.BFVSegmentClient, "share", [], "share", shares)
    g = load_model("cryptonets-mnist")
    X, _ = load_dataset("cryptonets-mnist", "test")
    x = np.asarray(X[:1], dtype=np.float64)
    with PrivateSession(g, "hybrid", plan="he:0,ss:1-", spawn="thread", **OPTS) as s:
        for _ in range(2):
            del log[:], waiters[:]
            out = s.infer(x)
            np.testing.assert_allclose(out, run_reference(g, x), atol=1e-2)
            order = [e for e in log if e in ("start>", "dealer_start>", "bfv>", "<bfv", "collect>", "ss>")]
            assert order == ["start>", "dealer_start>", "bfv>", "<bfv", "collect>", "ss>"], log
            assert log.index("dealer_start>") < log.index("dealer_wait>") < log.index("<collect"), log
            assert log.index("bfv>") < log.index("<dealer_wait"), log  # the BFV segment ran while the dealer worked
            assert waiters == ["pi-hybrid-fill"]
    assert len(shares) == 2 and not np.array_equal(shares[0], shares[1])


def _segment(last: bool):
    g = load_model("cryptonets-mnist")
    srv = bfv_seg.BFVSegmentServer(g, 0, 1, last)
    cli = bfv_seg.BFVSegmentClient(g, srv.info())
    return g, srv, cli, srv.keyed(cli.ctx.public_blobs())


def test_precomputed_pads_serve_one_query_once():
    _, srv, cli, ctx = _segment(False)
    step = BFVSegmentStep(srv, False, Kind.SHARES, Kind.SHARES, ctx=ctx)
    step.precompute(1)
    first = step._take(1, None)
    again = step._take(1, None)  # nothing left ahead: made afresh, never the same pads
    assert first[0]["pads"][0][0] is not again[0]["pads"][0][0]
    assert not np.array_equal(first[0]["pads"][1], again[0]["pads"][1])
    step.precompute(1)
    assert len(step._take(2, None)) == 2  # made for another batch size: not used


def test_unmasking_made_for_another_mask_is_not_used():
    """The server precomputed the unmasking plaintexts for r1, the 2PC then used r2: the result is still exact."""
    g, srv, cli, ctx = _segment(False)
    t, h = cli.t, conv.half(cli.t)
    n = cli.n_values
    X, _ = load_dataset("cryptonets-mnist", "test")
    x_int = np.rint(np.asarray(X[0], dtype=np.float64).reshape(-1) * 2 ** 16).astype(np.int64)
    r1, r2 = conv.input_mask(t, n), conv.input_mask(t, n)
    prep = srv.prepare(ctx, r1)
    blobs, b = srv.run(ctx, cli.upload(np.mod(x_int + h + r2, t), plain=False), r2, prep)
    a = cli.share(blobs)
    y = a + b - h - t * (a + b >= t)
    A, bias = srv.seg.program.ops[0].A, srv.seg.program.ops[0].b
    np.testing.assert_array_equal(y, (A @ x_int + bias).astype(np.int64))


def test_input_ciphertexts_come_one_per_frame():
    _, srv, cli, ctx = _segment(True)
    step = BFVSegmentStep(srv, False, Kind.PLAIN_CLIENT, Kind.PLAIN_CLIENT, ctx=ctx)
    a, b = socket.socketpair()
    try:
        Channel(a).send_blobs([b"x", b"y"])
        with pytest.raises(ShapeError, match="one per frame"):
            next(step._incoming(Channel(b), srv.n_in))
    finally:
        a.close()
        b.close()
    with pytest.raises(ShapeError, match="input ciphertexts"):  # too few
        srv.run(ctx, cli.upload(np.zeros(cli.n_values), plain=True)[:-1] if srv.n_in > 1 else [], None)
