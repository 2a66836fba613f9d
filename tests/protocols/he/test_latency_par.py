"""A channel-packed step's terms shared with the helper process (`latency_par`): any share plus the rest is
the whole step, the split pays by its cost model, and a query through the helper equals one without it --
also when the helper dies (the next query runs in-process, a new helper is prepared for later ones)."""
from __future__ import annotations

import threading

import pytest
import numpy as np
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from torch import nn

from privinfer.model import run_reference
from privinfer.model.torch_layers import Square
from privinfer.protocols.he import HE, _KeyedContext, batch_helper, convpack_eval, latency_par, seeded
from privinfer.protocols.he import latency_par_helper
from privinfer.protocols.he.context import CKKSContext
from privinfer.protocols.he.convpack import RotStep
from privinfer.protocols.he.convpack_eval import evaluate_rot, merge_inputs, rot_partials
from privinfer.protocols.he.convpack_plan import plan_multi
from privinfer.protocols.he.latency import CompiledPlan, NumpyBackend, SealBackend, client_vectors, plan_latency
from privinfer.protocols.he.params import HEParams
from privinfer.protocols.he.program import build_program

from .test_convpack import _graph, conv_stacks


def _terms(st_):
    return [tuple(int(v) for v in r) for r in st_.keys]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_stacks(), st.sampled_from([1024, 4096]), st.integers(0, 1000))
def test_any_share_plus_the_rest_is_the_whole_step(g, slots, seed):
    plan = plan_multi(build_program(g, True), slots)
    assume(plan is not None)
    rng = np.random.default_rng(seed)
    be = NumpyBackend(slots)
    for step in plan.steps:
        if not isinstance(step, RotStep):
            continue
        pts = {k: rng.standard_normal(slots) for k in _terms(step)}
        xs = [rng.standard_normal(slots) for _ in range(step.n_in * step.merge)]
        whole = evaluate_rot(be, step, pts, [x.copy() for x in xs])
        merged = merge_inputs(be, step, [x.copy() for x in xs])
        masks = [rng.random(len(pts)) < 0.5] + [m for m in latency_par._candidates(step)][:6]
        split = latency_par.split_rot(step)
        if split is not None:
            masks.append(split)
        for mask in masks:
            theirs = {k for k, m in zip(_terms(step), mask) if m}
            a = rot_partials(be, step, pts, merged, only=set(pts) - theirs)
            b = rot_partials(be, step, pts, merged, only=theirs)
            for o in range(step.n_out):
                got = sum(v for v in (a[o], b[o]) if v is not None)
                assert np.allclose(got, whole[o], atol=1e-9 * max(1.0, np.abs(whole[o]).max()))


def _small_cnn():
    return _graph((1, 16, 16), [nn.Conv2d(1, 16, 3), Square(), nn.AvgPool2d(2), nn.Conv2d(16, 8, 3),
                                Square(), nn.Flatten(), nn.Linear(200, 6)], 5)


def test_split_only_where_it_pays_by_the_cost_model():
    proto = HE(_small_cnn(), circuit_privacy="fast", conv_packing="on")
    comp = proto.compiled
    assert comp.splits, "a 16-channel convolution should be shared with the helper"
    for item, mask, vecs, _, _ in comp.splits.values():
        step = item.step
        every = np.ones(len(mask), dtype=bool)
        assert 0 < mask.sum() < len(mask) and vecs.shape == (mask.sum(), comp.plan.slots)
        slower = max(latency_par.side_cost(step, mask), latency_par.side_cost(step, ~mask))
        assert slower <= latency_par.MIN_GAIN * latency_par.side_cost(step, every)
    one = RotStep(1, 1, np.zeros((1, 8), dtype=np.int64), 1, np.zeros((1, 4), dtype=np.int64),
                  *[np.zeros(0, dtype=np.int64)] * 4)
    assert latency_par.split_rot(one) is None  # one term: nothing to share


def _helper_session(proto, g, seed: int):
    """A client's keys loaded into a server context with the helper prepared (in the foreground), and
    `query(par)`: one encrypted image evaluated serially (par=None) or shared with the helper, decrypted."""
    params, plan, comp = proto.latency_params, proto.plan, proto.compiled
    cctx = CKKSContext.create(params, plan.rotation_steps)
    blobs = cctx.public_blobs()
    sctx = _KeyedContext(proto.ctx)
    sctx.load_public(blobs, plan.rotation_steps)
    par = latency_par.ParSession(comp, sctx, blobs, background=False)
    enc = seeded.SeededEncryptor(cctx.seal, cctx.secret_key, cctx.encoder)
    x = np.random.default_rng(seed).random(g.input_shape)
    up = [enc.encrypt(v, 2.0 ** params.input_scale_bits) for v in client_vectors(plan, x)]
    n_primes = len(params.coeff_mod_bit_sizes) - 1

    def query(p):
        cts = [seeded.load(sctx.seal, b, n_primes=n_primes, scale=2.0 ** params.input_scale_bits) for b in up]
        return cctx.decrypt_ct(comp.evaluate(cts, backend=SealBackend(sctx), par=p))[plan.output_slots()]
    return par, query, run_reference(g, x[None])[0]


def test_query_through_the_helper_equals_the_serial_one_and_survives_its_death(monkeypatch):
    busy = []
    monkeypatch.setattr(latency_par, "core_is_free", lambda: not busy)  # the machine's load is not ours to test
    g = _small_cnn()
    proto = HE(g, circuit_privacy="fast", conv_packing="on")
    comp = proto.compiled
    par, query, ref = _helper_session(proto, g, seed=3)
    assert par.ready.is_set() and par.blobs is None  # the helper has the keys: no second copy here
    serial, shared = query(None), query(par)
    assert par.used == len(comp.splits)  # every split step had a share computed in the helper
    tol = 1e-2 * max(1.0, np.abs(ref).max())
    assert np.abs(shared - ref).max() <= tol and np.abs(shared - serial).max() <= tol
    assert shared.argmax() == ref.argmax()
    # no free core: the step runs here, same answer
    busy.append(True)
    used = par.used
    assert np.abs(query(par) - ref).max() <= tol and par.used == used and par.skipped == len(comp.splits)
    busy.clear()
    # the helper dies: the next query runs in-process (same answer), nothing hangs
    batch_helper._helper.proc.kill()
    batch_helper._helper.proc.wait(10)
    used = par.used
    monkeypatch.setattr(latency_par, "RETRY_S", 0.0)
    again = query(par)
    assert par.used == used and np.abs(again - ref).max() <= tol
    # ... and prepares the new helper in the background: later queries use it again
    assert par.ready.wait(120)
    assert np.abs(query(par) - ref).max() <= tol and par.used == used + len(comp.splits)
    # the server's own half fails after the helper was asked: the helper's unread reply would answer the next
    # request (another connection's, maybe), so that helper is marked broken and replaced; the next query is right
    real = convpack_eval.rot_partials

    def failing(*a, **k):
        if k.get("only") is not None and not failing.done:
            failing.done = True
            raise MemoryError("injected")
        return real(*a, **k)
    failing.done = False
    monkeypatch.setattr(convpack_eval, "rot_partials", failing)
    old = batch_helper._helper
    with pytest.raises(MemoryError):
        query(par)
    monkeypatch.setattr(convpack_eval, "rot_partials", real)
    assert old.broken
    assert np.abs(query(par) - ref).max() <= tol
    # a closed connection is never prepared again (its keys take no helper slot)
    par.close()
    par._prepare()
    assert par.closed and par.blobs is None and not par.ready.is_set()


def test_switched_off_by_the_environment_and_by_a_busy_machine(monkeypatch):
    monkeypatch.setenv("PRIVINFER_HE_LATENCY_HELPER", "0")
    assert not latency_par.enabled()
    monkeypatch.setattr(latency_par, "_cores", lambda: 2)
    monkeypatch.setattr(latency_par, "_runnable", lambda: 1)  # only this thread runs: the helper gets a core
    assert latency_par.core_is_free()
    monkeypatch.setattr(latency_par, "_runnable", lambda: 3)
    assert not latency_par.core_is_free()
    monkeypatch.setattr(latency_par, "_runnable", lambda: None)  # no /proc: assume a free core
    assert latency_par.core_is_free()


class _InProcessHelper:
    """The helper's side (`latency_par_helper.handle`) behind the parent's `Helper` interface, in this process."""

    def __init__(self):
        self.lock, self.known, self.sent, self._rep = threading.Lock(), set(), [], None

    def send(self, header, *payloads):
        self.sent.append((header, payloads))
        self._rep = latency_par_helper.handle(dict(header), list(payloads))

    def reply(self, timeout=None, payloads=None):
        header, data = self._rep
        if payloads is not None:
            payloads.extend(data)
        return header

    def alive(self):
        return True


class _Compiled:  # what ParSession and _send_plan read of a CompiledPlan (weak-referenceable)
    def __init__(self, step, vecs, slots):
        mask = np.ones(len(step.keys), dtype=bool)
        self.splits = {0: (type("Item", (), {"step": step})(), mask, vecs, 2.0 ** 30, 0)}
        self.plan = type("Plan", (), {"slots": slots, "key_paths": {}})()
        self.par_key = None


def _in_process_helper(monkeypatch, sessions: int):
    """(helper, compiled one-step plan, server context, client key blobs) with the helper's side in-process."""
    monkeypatch.setattr(latency_par_helper, "MAX_SESSIONS", sessions)
    monkeypatch.setattr(latency_par_helper, "_state", latency_par_helper._HelperState())
    h = _InProcessHelper()
    monkeypatch.setattr(latency_par, "_acquire", lambda wait, free_core=False: h.lock.acquire() and h)
    monkeypatch.setattr(batch_helper, "_helper", h)  # the process-wide helper, which `close` tells to forget
    params = HEParams(N=4096, coeff_mod_bit_sizes=(35, 30, 40), scale_bits=30, depth=1, slots=2048)
    cctx = CKKSContext.create(params, [1])
    blobs = cctx.public_blobs()
    sctx = CKKSContext.for_params(params)
    sctx.load_public(blobs, [1])
    S = params.slots
    step = RotStep(1, 1, np.zeros((1, S), dtype=np.int64), 1, np.zeros((1, 4), dtype=np.int64),
                   *[np.zeros(0, dtype=np.int64)] * 4)
    comp = _Compiled(step, np.random.default_rng(0).standard_normal((1, S)), S)
    return h, comp, sctx, blobs


def test_key_blobs_live_for_the_first_preparation_only_and_evictions_reach_the_parent(monkeypatch):
    h, comp, sctx, blobs = _in_process_helper(monkeypatch, 1)
    a = latency_par.ParSession(comp, sctx, blobs, background=False)
    assert a.ready.is_set() and a.blobs is None and a.key in h.known
    assert h.sent[-1][1] == tuple(blobs)  # the first preparation sends the client's blobs as received
    b = latency_par.ParSession(comp, sctx, blobs, background=False)
    assert b.key in h.known and a.key not in h.known  # the helper dropped a (its cache holds one) and said so
    a.ready.clear()
    a._prepare()  # a's retry: the keys serialized again from its context (the public key is not needed)
    head, sent = h.sent[-1]
    assert head["op"] == "lat_keys" and sent[0] == b"" and len(sent[2]) > 0 and sent[1:] != tuple(blobs[1:])
    assert a.ready.is_set() and a.key in h.known and b.key not in h.known
    a.close()
    a._prepare()  # a closed connection is never prepared again
    assert not a.ready.is_set() and a.key not in h.known and latency_par_helper._state.sessions.keys() == []


def test_a_retry_serializes_the_keys_before_it_takes_the_helper(monkeypatch):
    """The helper's lock is what every other connection's query needs: a retry's re-serialization of the keys
    (~0.27 s for minionn-mnist-he) happens before the lock is taken, and the keys still reach the helper."""
    from privinfer.protocols.he import context
    h, comp, sctx, blobs = _in_process_helper(monkeypatch, 2)
    a = latency_par.ParSession(comp, sctx, blobs, background=False)
    held = []
    real_dump = context.dump

    def dump(obj):
        held.append(h.lock.locked())
        return real_dump(obj)
    monkeypatch.setattr(context, "dump", dump)
    a.ready.clear()
    a._prepare()
    assert held == [False, False]  # relinearization and Galois keys, both serialized with the helper free
    assert a.ready.is_set() and h.sent[-1][0]["op"] == "lat_keys" and len(h.sent[-1][1][2]) > 0
    assert not h.lock.locked()


def _dense_cnn():
    """A convolution, then a hidden dense layer: a one-ciphertext diagonal step (`DiagStep`) between two RotSteps."""
    return _graph((1, 12, 12), [nn.Conv2d(1, 4, 3), Square(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(100, 32),
                                Square(), nn.Linear(32, 4)], 5)


class _ShareHere:
    """`ParSession.run_rot`'s arithmetic in this process: the share `masks[idx]` and the rest, summed."""

    def __init__(self):
        self.masks, self.used = {}, 0

    def run_rot(self, be, idx, st_, pts, xs):
        theirs = {tuple(int(v) for v in r) for r in st_.keys[self.masks[idx]]}
        a = rot_partials(be, st_, pts, xs, only=set(pts) - theirs)
        b = rot_partials(be, st_, pts, xs, only=theirs)
        self.used += 1
        return [u if w is None else w if u is None else be.add(u, w) for u, w in zip(a, b)]


def test_a_diagonal_step_shared_through_its_view_is_the_same_step():
    """A dense layer's diagonal step, evaluated as its `RotStep` view (`diag_view`) with any share computed apart,
    gives the serial step's result, and rotates by the plan's own Galois keys only."""
    g = _dense_cnn()
    prog = build_program(g)
    prog.conv_packing = "on"
    plan = plan_latency(prog, 1024)  # the channel packing, its Galois keys limited (babies chained) as HE plans it
    S = plan.slots
    comp = CompiledPlan(plan, prog, NumpyBackend(S))
    diag = [i for i, it in enumerate(comp.items) if it.kind == "diag"]
    assert diag, "the hidden dense layer should be a diagonal step"
    rng = np.random.default_rng(5)
    x = rng.random(g.input_shape)
    serial = comp.evaluate(list(client_vectors(plan, x)))
    ref = run_reference(g, x[None])[0]
    assert np.allclose(serial[plan.output_slots()], ref, atol=1e-8 * max(1.0, np.abs(ref).max()))
    for i in diag:
        view = comp.items[i].view
        assert view is not None and view.key_steps(S) <= set(plan.raw_rotation_steps())
        assert view.n_rotations() == len(comp.items[i].step.baby_chain()) + max(comp.items[i].step.giants())
        cuts = [rng.random(len(view.keys)) < 0.5, latency_par.split_rot(view)] + list(latency_par._candidates(view))[:4]
        for mask in [m for m in cuts if m is not None]:
            par = _ShareHere()
            par.masks[i] = mask
            comp.splits = {i: (None, mask, None, 1.0, 0)}
            shared = comp.evaluate(list(client_vectors(plan, x)), par=par)
            assert par.used == 1 and np.allclose(shared, serial, atol=1e-9 * max(1.0, np.abs(serial).max()))


@pytest.mark.slow  # a SEAL set-up and the helper process; `test_a_diagonal_step_shared_...` covers the arithmetic
def test_a_diagonal_step_shared_with_the_helper_process_gives_the_serial_answer(monkeypatch):
    monkeypatch.setattr(latency_par, "core_is_free", lambda: True)
    g = _graph((1, 16, 16), [nn.Conv2d(1, 8, 3), Square(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(392, 64),
                             Square(), nn.Linear(64, 6)], 5)
    proto = HE(g, circuit_privacy="fast", conv_packing="on")
    comp = proto.compiled
    diag = [i for i in comp.splits if comp.items[i].kind == "diag"]
    assert diag, "the 392x64 dense layer's diagonal step should be shared"
    par, query, ref = _helper_session(proto, g, seed=4)
    serial, shared = query(None), query(par)
    par.close()
    assert par.used == len(comp.splits)
    tol = 1e-2 * max(1.0, np.abs(ref).max())
    assert np.abs(shared - ref).max() <= tol and np.abs(shared - serial).max() <= tol


def test_the_helper_gets_the_diagonal_steps_own_vectors_in_term_order(monkeypatch):
    """The slot vectors the server sends the helper for its share of a diagonal step are the step's own
    plaintext vectors, in the order of the share's terms (the helper encodes them by position): the fast
    counterpart of the slow test through the helper process."""
    from privinfer.protocols.he import latency_eval
    monkeypatch.setattr(latency_eval, "SealBackend", NumpyBackend)  # compile as the server does, on vectors
    g = _graph((1, 16, 16), [nn.Conv2d(1, 8, 3), Square(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(392, 64),
                             Square(), nn.Linear(64, 6)], 5)  # the slow test's network
    prog = build_program(g)
    prog.conv_packing = "on"
    plan = plan_latency(prog, 2048)
    comp = CompiledPlan(plan, prog, NumpyBackend(plan.slots))
    diag = [i for i in comp.splits if comp.items[i].kind == "diag"]
    assert diag, "the 392x64 dense layer's diagonal step should be shared"
    for i in diag:
        _, share, vecs, _, _ = comp.splits[i]
        keys = comp.items[i].view.keys[share]
        assert 0 < len(keys) == len(vecs) < len(comp.items[i].view.keys)
        for (_, _, a, b), v in zip(keys, vecs):
            np.testing.assert_array_equal(v, comp.items[i].pts[(int(a), int(b))])
