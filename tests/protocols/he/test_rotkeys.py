"""`rotkeys.jump_babies`: a single-step baby chain takes its multiples of n1/2 by one more key, for the helper."""
from __future__ import annotations

import dataclasses

import numpy as np
from torch import nn

from privinfer.model import run_reference
from privinfer.model.torch_layers import Square
from privinfer.protocols.he import latency_par
from privinfer.protocols.he.latency import CompiledPlan, NumpyBackend, client_vectors, plan_latency
from privinfer.protocols.he.program import build_program
from privinfer.protocols.he.rotkeys import JUMP_KEYS, JUMP_MIN, MAX_GALOIS_KEYS, _shareable

from .test_convpack import _graph, _run
from .test_latency_par import _ShareHere


def _jump_plan():
    """The helper tests' network (conv, x², pool, dense 392->64, x², dense): its chains of 15 single steps jump."""
    g = _graph((1, 16, 16), [nn.Conv2d(1, 8, 3), Square(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(392, 64),
                             Square(), nn.Linear(64, 6)], 5)
    prog = build_program(g)
    prog.conv_packing = "on"
    return g, prog, plan_latency(prog, 2048)


def test_jumped_babies_same_rotations_exact_keys_and_a_cheaper_helper_share():
    """A plan whose chains jump evaluates to the reference with exactly its Galois keys (at most one more than
    MAX_GALOIS_KEYS), performs as many rotations as without the jump, and each jumped step's best helper share
    has a cheaper slower side; that share computed apart plus the rest is the serial step."""
    g, prog, plan = _jump_plan()
    jumped = [i for i, s in enumerate(plan.steps) if getattr(s, "baby_jump", 0)]
    assert jumped, "a chain of 15 single steps should jump by n1/2"
    x = np.random.default_rng(3).random(g.input_shape)
    got, used = _run(plan, prog, x)
    ref = run_reference(g, x[None])[0]
    assert np.allclose(got, ref, atol=1e-8 * max(1.0, np.abs(ref).max()))
    assert used == set(plan.rotation_steps) and len(plan.rotation_steps) <= MAX_GALOIS_KEYS + JUMP_KEYS
    plain = dataclasses.replace(plan, steps=[dataclasses.replace(s, baby_jump=0) if i in jumped else s
                                             for i, s in enumerate(plan.steps)])
    assert plain.n_rotations() == plan.n_rotations()
    for i in jumped:
        st = plan.steps[i]
        d = st.n1 // 2
        view = _shareable(st, plan.slots)
        chains = range(view.n_in)
        assert d >= JUMP_MIN and d in plan.rotation_steps
        assert all({s for _, _, s in view.baby_chain(c)} == {1, d} for c in chains)
        assert latency_par.best_split(view)[1] < latency_par.best_split(_shareable(plain.steps[i], plan.slots))[1]
    comp = CompiledPlan(plan, prog, NumpyBackend(plan.slots))
    serial = comp.evaluate(list(client_vectors(plan, x)))
    for i in jumped:
        item = comp.items[i]
        view = item.view if item.kind == "diag" else item.step
        mask = latency_par.split_rot(view)
        assert mask is not None and mask.any() and not mask.all()
        par = _ShareHere()
        par.masks[i] = mask
        comp.splits = {i: (None, mask, None, 1.0, 0)}
        shared = comp.evaluate(list(client_vectors(plan, x)), par=par)
        assert par.used == 1 and np.allclose(shared, serial, atol=1e-9 * max(1.0, np.abs(serial).max()))


def test_the_jump_reaches_the_digest_and_the_helper_wire(monkeypatch):
    """The jump changes the plan digest (client and server must agree on the chains), and the header that gives
    the helper its share names it, so that the helper's chain is the parent's."""
    from privinfer.protocols.he import latency_eval, latency_par_helper
    _, prog, plan = _jump_plan()
    jumped = [i for i, s in enumerate(plan.steps) if getattr(s, "baby_jump", 0)]
    plain = dataclasses.replace(plan, steps=[dataclasses.replace(s, baby_jump=0) if i in jumped else s
                                             for i, s in enumerate(plan.steps)])
    assert plain.digest() != plan.digest()
    monkeypatch.setattr(latency_eval, "SealBackend", NumpyBackend)  # compile as the server does, on vectors
    comp = CompiledPlan(plan, prog, NumpyBackend(plan.slots))
    sent = []

    class _H:
        known: set = set()

        def send(self, head, *payloads):
            sent.append((head, payloads))

        def reply(self):
            return {}
    latency_par._send_plan(_H(), comp, type("P", (), {"N": 4096, "coeff_mod_bit_sizes": (30, 30)})())
    heads = {h["step"]: h for h, _ in sent}
    assert set(jumped) & set(heads)
    for i in set(jumped) & set(heads):
        assert heads[i]["baby_jump"] == plan.steps[i].baby_jump
    # the helper builds its RotStep from that header: the same chain as the parent's
    built = {}
    monkeypatch.setattr(latency_par_helper, "_state", latency_par_helper._HelperState())
    import tenseal.sealapi  # noqa: F401  (the helper's handler imports it)
    for i in set(jumped) & set(heads):
        head, payloads = next((h, p) for h, p in sent if h["step"] == i)
        latency_par_helper.handle({**head, "N": 4096, "bits": [30, 30], "level": 0, "scale": 2.0 ** 20},
                                  list(payloads))
        built[i] = latency_par_helper._state.plans[head["plan"]][i][0]
        view = comp.items[i].view if comp.items[i].kind == "diag" else plan.steps[i]
        assert all(built[i].baby_chain(c) == view.baby_chain(c) for c in range(view.n_in))
