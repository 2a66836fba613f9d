"""Prefetch in a hybrid session (client option `prefetch`, `protocols/hybrid/ahead.py`): after an answer both
sides prepare the next query's single-use material; nothing prepared is used twice, another batch size
replaces it, and a failure while prefetching leaves the answer standing and fails the next query."""
import numpy as np
import pytest

from privinfer import PrivateSession
from privinfer.errors import ParameterError, ProtocolError
from privinfer.model.reference import run_reference
from privinfer.protocols.engine import Kind
from privinfer.protocols.hybrid import Hybrid, bfv_seg
from privinfer.protocols.hybrid.ahead import ClientAhead, MaskAhead, ServerAhead, prefetch_flag
from privinfer.protocols.hybrid.steps import BFVSegmentStep
from privinfer.protocols.ss import sides
from privinfer.zoo import load_dataset, load_model


def test_prefetch_flag_reads_api_and_cli_values():
    assert [prefetch_flag(v) for v in (True, False, 1, 0, "1", "0", "true", "off")] == \
        [True, False, True, False, True, False, True, False]
    for bad in (2, "maybe", None, 0.5):
        with pytest.raises(ParameterError, match="prefetch"):
            prefetch_flag(bad)
    assert Hybrid.validate_client_options({"prefetch": "1"})["prefetch"] is True
    assert Hybrid.validate_client_options({})["prefetch"] is False


def test_a_mask_drawn_ahead_serves_one_query():
    draws = iter(range(100))
    m = MaskAhead(lambda b: np.full((b, 3), next(draws)))
    r = m.prefetch(1)
    assert m(1) is r                      # the next query of that batch takes it
    assert not np.array_equal(m(1), r)    # then it is gone: a fresh draw
    m.prefetch(1)
    assert m(2).shape == (2, 3) and m.ahead is None   # another batch: fresh, and the one ahead is dropped
    m.prefetch(1)
    m.drop()
    assert not np.array_equal(m(1), r) and m.ahead is None


def _step():
    g = load_model("cryptonets-mnist")
    srv = bfv_seg.BFVSegmentServer(g, 0, 1, False)
    cli = bfv_seg.BFVSegmentClient(g, srv.info())
    return BFVSegmentStep(srv, False, Kind.SHARES, Kind.SHARES, ctx=srv.keyed(cli.ctx.public_blobs())), cli


def test_work_made_ahead_is_kept_until_taken_then_dropped():
    """The 2PC's idle-time precompute does not remake what a prefetch made for the same batch and mask; a
    different mask or batch replaces it; a query takes it once; `drop` forgets it."""
    step, cli = _step()
    r = np.random.default_rng(0).integers(0, cli.t, (1, cli.n_values))
    step.precompute(1, r)
    made = step._prep[1]
    step.precompute(1, r.copy())          # the ss segment before it asks again (same r): kept
    assert step._prep[1] is made
    step.precompute(1, (r + 1) % cli.t)   # another r: remade
    assert step._prep[1] is not made
    made = step._prep[1]
    assert step._take(1, r) is made and step._prep is None  # taken once
    step.precompute(1, None)
    step.drop()
    assert step._prep is None


class _FakeSS:
    def __init__(self, fail_start=False):
        self.calls, self.fail_start = [], fail_start

    def _offline_start(self, ch, batch):
        self.calls.append(("start", batch))
        if self.fail_start:
            raise ProtocolError("peer gone")

    def _offline_collect(self, ch, batch):
        self.calls.append(("collect", batch))


class _FakeBFV:
    def __init__(self):
        self.made = []

    def precompute(self, batch, r=None):
        self.made.append((batch, r))

    def drop(self):
        self.made.append("drop")


class _FakeSSStep:
    def __init__(self, mask):
        self.mask = mask


def test_server_ahead_starts_after_the_answer_and_replaces_another_batch():
    ss, bfv0, bfv1 = _FakeSS(), _FakeBFV(), _FakeBFV()
    mask = MaskAhead(lambda b: np.zeros((b, 2)))
    a = ServerAhead(ss, [])
    a.pairs = [(None, bfv0), (_FakeSSStep(mask), bfv1)]
    a.after(None, 1)
    assert ss.calls == [("start", 1)] and bfv0.made == [(1, None)] and bfv1.made == [(1, mask.ahead)]
    a.start(None, 1)                       # the next query of batch 1: nothing to start
    assert ss.calls == [("start", 1)] and a.batch is None
    a.after(None, 1)
    a.start(None, 3)                       # batch 3: batch 1's phase is finished, then replaced
    assert ss.calls[-3:] == [("start", 1), ("collect", 1), ("start", 3)]
    a.after(None, 3)
    a.drop()
    assert a.batch is None and mask.ahead is None and bfv0.made[-1] == "drop"


def test_client_ahead_failure_keeps_the_answer_and_fails_the_next_query():
    ss = _FakeSS(fail_start=True)
    a = ClientAhead(ss)
    a.after(None, 1)                       # no exception: the answer in hand stands
    with pytest.raises(ProtocolError, match="peer gone"):
        a.start(None, 1)
    ok = ClientAhead(_FakeSS())
    ok.after(None, 2)
    ok.start(None, 2)
    ok.after(None, 2)
    ok.start(None, 1)
    assert ok.ss.calls == [("start", 2), ("start", 2), ("collect", 2), ("start", 1)]


@pytest.mark.slow  # ~6 s (a CrypTen group); the ahead logic itself is covered by the tests above
def test_session_with_prefetch_is_exact_and_single_use(monkeypatch):
    """Server: the offline phase of query n+1 starts right after query n's answer; the next query starts none.
    The same image twice gets different client shares (no pad or mask served twice); a batch of 2 after
    batches of 1 is exact too."""
    starts, shares = [], []
    fn = sides._SSServer._offline_start
    monkeypatch.setattr(sides._SSServer, "_offline_start", lambda self, ch, b: (starts.append(b), fn(self, ch, b))[1])
    share = bfv_seg.BFVSegmentClient.share
    monkeypatch.setattr(bfv_seg.BFVSegmentClient, "share", lambda self, blobs: shares.append(share(self, blobs))
                        or shares[-1])
    g = load_model("cryptonets-mnist")
    X, _ = load_dataset("cryptonets-mnist", "test")
    x = np.asarray(X[:2], dtype=np.float64)
    with PrivateSession(g, "hybrid", plan="he:0,ss:1-", spawn="thread", dealer="local", mpc_timeout=30.0,
                        prefetch=True) as s:
        for _ in range(2):
            np.testing.assert_allclose(s.infer(x[:1]), run_reference(g, x[:1]), atol=1e-2)
        assert starts == [1, 1, 1]          # query 1's own, then one after each answer
        np.testing.assert_allclose(s.infer(x), run_reference(g, x), atol=1e-2)
        assert starts == [1, 1, 1, 2, 2]
    assert len(shares) == 4 and not np.array_equal(shares[0], shares[1])  # one per image


@pytest.mark.slow  # ~8 s (a CrypTen group); the dealer-failure path of the ss collect is in tests/protocols/ss
def test_dead_dealer_fails_the_next_query_with_prefetch_and_without():
    """The dealer's answer is awaited by a thread (`ss_seg._early_fill`): a dead dealer is a clear error at
    the collect, well before the gloo timeout. Without prefetch the next query fails; with prefetch (as `ss`'s)
    the query whose material was made ahead still runs (its online phase needs no dealer), the one after fails."""
    import os
    import signal
    import time

    from privinfer import PeerError
    from privinfer.server import Server
    from privinfer.session import connect
    from tests.protocols.ss.test_protocol import ss_processes, wait_for
    g = load_model("cryptonets-mnist")
    X, _ = load_dataset("cryptonets-mnist", "test")
    x = np.asarray(X[:1], dtype=np.float64)
    srv = Server(g, "hybrid", plan="he:0,ss:1-", dealer="local", mpc_timeout=30.0, timeout=60).start()
    try:
        for prefetch in (False, True):
            with connect("127.0.0.1", srv.port, "hybrid", prefetch=prefetch) as s:
                np.testing.assert_allclose(s.infer(x), run_reference(g, x), atol=1e-2)
                dealers = wait_for(lambda: [p for p, n in ss_processes(os.getpid()).items() if n == "pi-ss-dealer"])
                assert len(dealers) == 1
                if prefetch:  # the next query's tuples (started after the answer) are in by then
                    time.sleep(1.0)
                os.kill(dealers[0], signal.SIGKILL)
                if prefetch:
                    np.testing.assert_allclose(s.infer(x), run_reference(g, x), atol=1e-2)
                t0 = time.monotonic()
                with pytest.raises(PeerError, match="dealer"):
                    s.infer(x)
                assert time.monotonic() - t0 < 30.0
    finally:
        srv.shutdown()
