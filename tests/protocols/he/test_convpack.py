"""The channel packing (`protocols/he/convpack.py`) against the reference executor.

Property tests run the server's evaluator on plaintext slot vectors (`NumpyBackend`, no encryption) over
random multi-channel convolution stacks (channels, kernel, stride, padding, pools); every rotation the
evaluator performs must be one of the plan's Galois steps, and every step must be used (the client
generates exactly those keys). One SEAL end-to-end test runs a small two-convolution network.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings, strategies as st
from torch import nn

import privinfer
from privinfer.model import compile_model, run_reference
from privinfer.model.torch_layers import Square
from privinfer.protocols.he.convpack import Grid, RotStep
from privinfer.protocols.he.convpack_plan import plan_multi
from privinfer.protocols.he.latency import CompiledPlan, NumpyBackend, client_vectors, plan_latency
from privinfer.protocols.he.program import build_program

SETTINGS = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class RecordingBackend(NumpyBackend):
    """NumpyBackend that records every rotation step it is asked for."""

    def __init__(self, slots):
        super().__init__(slots)
        self.steps = set()

    def rotate(self, ct, k):
        self.steps.add(int(k) % self.slots)
        return super().rotate(ct, k)


def _graph(shape, layers, seed, reinit=True):
    """The compiled network of `layers`; its weights are a function of `seed` alone (`reinit`): the layers
    were built, and drew their initial weights, before this call, from whatever state the global torch RNG
    was in (test order, hypothesis draws). `reinit=False` keeps weights that the caller set."""
    torch.manual_seed(seed)
    if reinit:
        for layer in layers:
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
    m = nn.Sequential(*layers)
    m.input_shape = shape
    return compile_model(m)


def _run(plan, prog, x):
    be = RecordingBackend(plan.slots)
    out = CompiledPlan(plan, prog, be).evaluate(list(client_vectors(plan, x)))
    return out[plan.output_slots()], be.steps


@st.composite
def conv_stacks(draw):
    cin, h = draw(st.integers(1, 3)), draw(st.integers(6, 14))
    layers, c, size = [], cin, h
    for i in range(draw(st.integers(1, 2))):
        k = draw(st.integers(1, min(5, size)))
        stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, 2))
        cout = draw(st.integers(1, 6))
        out = (size + 2 * pad - k) // stride + 1
        if out < 1:
            break
        layers += [nn.Conv2d(c, cout, k, stride=stride, padding=pad), Square()]
        c, size = cout, out
        if draw(st.booleans()) and size >= 2 and size % 2 == 0:
            layers.append(nn.AvgPool2d(2))
            size //= 2
    assume(layers)
    layers += [nn.Flatten(), nn.Linear(c * size * size, draw(st.integers(1, 12)))]
    return _graph((cin, h, h), layers, draw(st.integers(0, 1000)))


@SETTINGS
@given(conv_stacks(), st.sampled_from([1024, 4096]))
def test_channel_packing_matches_reference(g, slots):
    prog = build_program(g)
    plan = plan_multi(prog, slots)
    assume(plan is not None)
    assert any(isinstance(s, RotStep) for s in plan.steps)
    x = np.random.default_rng(0).random(g.input_shape)
    got, used = _run(plan, prog, x)
    ref = run_reference(g, x[None])[0]
    assert np.allclose(got, ref, atol=1e-8 * max(1.0, np.abs(ref).max()))
    assert used == set(plan.rotation_steps)  # the keys the client makes are exactly the ones evaluated
    # the image itself, laid out (and replicated when it fits one ciphertext): never an im2col expansion
    counts = np.bincount(plan.input.gathers[plan.input.gathers >= 0], minlength=int(np.prod(g.input_shape)))
    assert (counts >= 1).all() and (plan.input.n_ct == 1 or (counts == 1).all())


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 4), st.sampled_from([(2, 2), (1, 1), (3, 1)]), st.integers(4, 9),
       st.booleans())
def test_grid_layout_holds_each_element_once(C, H_mul, phases, W, packed):
    ph, pw = phases
    H = H_mul * ph
    gw = 1 << max(0, (-(-W // pw) - 1).bit_length())
    g = Grid(C, H, W, ph, pw, gw, 1, 1 << max(0, (-(-H // ph) * gw - 1).bit_length()), packed)
    assume(g.fits(1024))
    idx = g.idx(1024)
    vals = idx[idx >= 0]
    assert set(vals.tolist()) == set(range(C * H * W))
    if not packed:
        assert len(vals) == C * H * W


def test_avgpool_folds_into_phase_sums():
    g = _graph((1, 12, 12), [nn.Conv2d(1, 4, 3), Square(), nn.AvgPool2d(2), nn.Conv2d(4, 4, 3), Square(),
                             nn.Flatten(), nn.Linear(36, 5)], 3)
    prog = build_program(g)
    plan = plan_multi(prog, 1024)
    rots = [s for s in plan.steps if isinstance(s, RotStep)]
    assert rots[0].n_out == 4 and rots[1].merge == 4  # conv1 in 4 polyphase ciphertexts, pool = their sum
    x = np.random.default_rng(1).random(g.input_shape)
    got, _ = _run(plan, prog, x)
    assert np.allclose(got, run_reference(g, x[None])[0], atol=1e-9)


def test_planner_keeps_one_convolution_networks_on_their_plans():
    """cryptonets-shaped networks keep the one-ciphertext plan (no regression); wide CNNs get the packing."""
    small = _graph((1, 28, 28), [nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 5, 5, stride=2), Square(), nn.Flatten(),
                                 nn.Linear(845, 100), Square(), nn.Linear(100, 10)], 0)
    assert not any(isinstance(s, RotStep) for s in plan_latency(build_program(small, True), 8192).steps)
    wide = _graph((1, 28, 28), [nn.Conv2d(1, 16, 5), Square(), nn.AvgPool2d(2), nn.Conv2d(16, 16, 5), Square(),
                                nn.AvgPool2d(2), nn.Flatten(), nn.Linear(256, 10)], 0)
    plan = plan_latency(build_program(wide, True), 4096)  # 9216 values: no one-ciphertext plan fits
    assert isinstance(plan.steps[0], RotStep) and plan.input.n_ct == 1


def test_seal_end_to_end_channel_packed(capsys):
    g = _graph((1, 16, 16), [nn.Conv2d(1, 16, 3), Square(), nn.AvgPool2d(2), nn.Conv2d(16, 8, 3),
                             Square(), nn.Flatten(), nn.Linear(200, 6)], 5)
    x = np.random.default_rng(2).random((2, 1, 16, 16))
    with privinfer.PrivateSession(g, "he", spawn="thread", circuit_privacy="fast", conv_packing="on",
                                  progress=True) as s:
        got = s.infer(x)
        client = s.client
        assert isinstance(client.plan.steps[0], RotStep)
        assert client.ctx.rotation_steps == tuple(client.plan.rotation_steps)
        assert s.stats.last.bytes_client_to_server < 2 * 1.2e6  # one seeded ciphertext per image
    err = capsys.readouterr().err  # set-up progress: the server's stages, key generation and upload
    for line in ("he: server: parameters CKKS", "he: server: weights encoded", "he: generating keys",
                 "he: keys generated", "he: keys sent"):
        assert line in err, err
    ref = run_reference(g, x)
    assert np.abs(got - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())
    assert (got.argmax(1) == ref.argmax(1)).all()


def _dense_pattern(g, seg_layers):
    """The structural pattern the slow way: compose the all-ones layers densely (unit vectors through torch)."""
    from privinfer.model.ir import Conv2d, Linear
    from privinfer.protocols.he.program import _compose
    chain = []
    for layer, sh in seg_layers:
        if isinstance(layer, Conv2d):
            layer = Conv2d(np.ones_like(layer.weight), np.zeros_like(layer.bias), layer.stride, layer.padding)
        elif isinstance(layer, Linear):
            layer = Linear(np.ones_like(layer.weight), np.zeros_like(layer.bias))
        chain.append((layer, sh))
    n_in = int(np.prod(seg_layers[0][1]))
    return chain, n_in


@SETTINGS
@given(conv_stacks())
def test_sparse_patterns_equal_the_composed_all_ones_maps(g):
    """`build_program` builds every segment's pattern by sparse boolean products (the client's set-up): it must
    be exactly the non-zero pattern of the composed all-ones layers (strides, padding, pools, flatten, linear)."""
    from privinfer.protocols.he.program import _compose
    prog = build_program(g, structure_only=True)
    layers = [(l, sh) for l, sh in zip(g.layers, g.shapes[:-1]) if l.kind in ("conv2d", "linear", "avgpool2d",
                                                                                "flatten")]
    # segments are the runs between squares: split the linear layers the same way
    runs, cur = [], []
    for l, sh in zip(g.layers, g.shapes[:-1]):
        if l.kind == "poly":
            runs.append(cur)
            cur = []
        else:
            cur.append((l, sh))
    runs.append(cur)
    assert len(runs) == len(prog.segments) and layers
    for seg, run in zip(prog.segments, runs):
        chain, n_in = _dense_pattern(g, run)
        want = _compose(chain, n_in, seg.n_out) > 0
        assert np.array_equal(seg.pattern, want)


def _seal_slots(proto, x):
    """Every output slot of `proto`'s compiled latency plan on `x`, evaluated on real SEAL ciphertexts: the
    client's keys and seeded upload, the server's keyed context (no session, no helper process)."""
    from privinfer.protocols.he import CKKSContext, seeded
    from privinfer.protocols.he.__init__ import _KeyedContext
    from privinfer.protocols.he.latency import SealBackend
    params, plan = proto.latency_params, proto.plan
    client = CKKSContext.create(params, plan.rotation_steps)
    server = _KeyedContext(proto.ctx)
    server.load_public(client.public_blobs(), plan.rotation_steps)
    scale = 2.0 ** params.input_scale_bits
    enc = seeded.SeededEncryptor(client.seal, client.secret_key, client.encoder)
    cts = [seeded.load(server.seal, enc.encrypt(v, scale), n_primes=len(params.coeff_mod_bit_sizes) - 1, scale=scale)
           for v in client_vectors(plan, x)]
    return client.decrypt_ct(proto.compiled.evaluate(cts, backend=SealBackend(server)))


def test_fast_mode_folds_the_output_mask_into_the_last_segment():
    """A channel-packed plan ends on a `RotStep` that writes each logit once and multiplies every other slot by
    plaintext zeros: fast mode then spends no prime (or q0 bits) on a separate 0/1 mask. Attack: decrypt the
    whole reply (before the flood) and look for anything but the logits in the other slots."""
    from privinfer.protocols.he import HE
    from privinfer.protocols.he.convpack_plan import clean_output
    from privinfer.protocols.he.params import mask_options
    g = _graph((1, 16, 16), [nn.Conv2d(1, 16, 3), Square(), nn.AvgPool2d(2), nn.Conv2d(16, 8, 3),
                             Square(), nn.Flatten(), nn.Linear(200, 6)], 5)
    proto = HE(g, circuit_privacy="fast", conv_packing="on")
    params, plan = proto.latency_params, proto.plan
    assert clean_output(plan) and params.notes["mask"] == "folded"
    assert "mask" not in params.notes["structure"] and "mask0" not in params.notes["structure"]
    assert not mask_options(params)["mask"] and all(it.kind not in ("mask", "mask0") for it in proto.compiled.items)
    flood = HE(g, circuit_privacy="flood", conv_packing="on").latency_params  # the flood keeps its mask level
    assert flood.notes["structure"][-1] == "mask"
    x = np.random.default_rng(3).random((1, 16, 16))
    out = _seal_slots(proto, x)
    ref = run_reference(g, x[None])[0]
    slots = plan.output_slots()
    assert np.abs(out[slots] - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())
    rest = np.delete(out, slots)
    # what the other slots keep: CKKS noise and the plaintext zeros' encoding error times the values, far
    # below the 2^-11 flood that is added next (an unmasked partial sum would be of the logits' size)
    assert np.abs(rest).max() < 2.0 ** -14, np.abs(rest).max()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_stacks())
def test_limited_keys_are_exactly_the_rotations_performed(g):
    """After `limit_keys` (composed rotations, babies chained by single steps) the evaluation still matches the
    reference and performs rotations by exactly the plan's Galois steps: the keys the client generates."""
    prog = build_program(g)
    plan = plan_multi(prog, 1024)
    assume(plan is not None)
    _check_limited_keys(g, prog, plan)


def _check_limited_keys(g, prog, plan) -> None:
    """`limit_keys(plan)` evaluates to the reference and rotates by exactly the plan's Galois steps."""
    from privinfer.protocols.he.rotkeys import limit_keys
    plan = limit_keys(plan, prog)
    x = np.random.default_rng(4).random(g.input_shape)
    got, used = _run(plan, prog, x)
    ref = run_reference(g, x[None])[0]
    assert np.allclose(got, ref, atol=1e-8 * max(1.0, np.abs(ref).max()))
    assert used == set(plan.rotation_steps)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(64, 100), st.integers(2, 12), st.integers(0, 1000))
def test_dense_middle_segment_babies_chain_by_one(hidden, n_out, seed):
    """minionn-shaped tail (conv, pool, dense, x², dense): the dense middle segment runs by the diagonal method;
    `limit_keys` chains its babies by single steps (no keys 2, 4, ...): same logits, keys == rotations."""
    from privinfer.protocols.he.latency_plan import DiagStep
    from privinfer.protocols.he.rotkeys import limit_keys
    g = _graph((2, 12, 12), [nn.Conv2d(2, 8, 3), Square(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(200, hidden),
                             Square(), nn.Linear(hidden, n_out)], seed)
    prog = build_program(g)
    plan = limit_keys(plan_multi(prog, 2048), prog)
    diags = [s for s in plan.steps if isinstance(s, DiagStep)]
    x = np.random.default_rng(seed).random(g.input_shape)
    got, used = _run(plan, prog, x)
    ref = run_reference(g, x[None])[0]
    assert np.allclose(got, ref, atol=1e-8 * max(1.0, np.abs(ref).max()))
    assert used == set(plan.rotation_steps)
    if diags and diags[0].baby_step:
        assert not {2, 4} & set(plan.rotation_steps)


def test_minionn_mnist_he_plan_keys_and_lola_fold():
    """The zoo's minionn-mnist-he (public structure only, as the server plans it): conv2 reads every channel
    twice and folds (200 plaintexts, not 400), the dense layer's babies chain by one, and the client makes at
    most `MAX_GALOIS_KEYS` Galois keys, none of them 2 or 4."""
    from privinfer.protocols.he.latency_plan import DiagStep
    from privinfer.protocols.he.rotkeys import MAX_GALOIS_KEYS
    from privinfer.zoo import load_model
    plan = plan_latency(build_program(load_model("minionn-mnist-he"), structure_only=True), 8192)
    rots = [s for s in plan.steps if isinstance(s, RotStep)]
    assert rots[0].grid.dup == 2 and rots[1].fold == (4096,) and len(rots[1].keys) == 200
    assert [s.baby_step for s in plan.steps if isinstance(s, DiagStep)] == [1]
    assert len(plan.rotation_steps) <= MAX_GALOIS_KEYS and not {2, 4} & set(plan.rotation_steps)
    # the dense layers' giants re-split to 16 (the convolutions' row stride): no key 8, no 16 composed of 8s
    assert 8 not in plan.rotation_steps and 16 in plan.rotation_steps and 16 not in plan.key_paths


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_stacks(), st.sampled_from([1024, 4096]))
def test_replayed_choices_give_the_same_plan(g, slots):
    """The client replays the server's packing decisions (WELCOME `plan_choices`) instead of searching: the
    same plan (digest), and choices that do not fit the network are refused with a typed error."""
    from privinfer.errors import ParameterError
    prog = build_program(g, structure_only=True)
    prog.conv_packing = "on"
    try:
        plan = plan_latency(prog, slots)
    except ParameterError:
        assume(False)
    assume(plan.choices is not None)
    replay = build_program(g, structure_only=True)
    replay.conv_packing, replay.plan_choices = "on", dict(plan.choices)
    assert plan_latency(replay, slots).digest() == plan.digest()
    for bad in ({"grid": 7, "segments": plan.choices["segments"]}, {"grid": 0, "segments": [0]},
                {"grid": plan.choices["grid"], "segments": [99] * len(plan.choices["segments"])}, {"oops": 1}):
        other = build_program(g, structure_only=True)
        other.conv_packing, other.plan_choices = "on", bad
        with pytest.raises(ParameterError):
            plan_latency(other, slots)


def test_output_phase_that_reads_only_padding_takes_another_layout():
    """Found by hypothesis: conv(1×1, stride 2, padding 1) on a 2×2 map before a pool. In the polyphase layout
    the pool wants, phase (0, 0) of the output reads only padding, so that output ciphertext would hold its bias
    alone (SEAL cannot multiply by a zero plaintext). The planner must take another layout, not refuse the
    network: the plan exists, matches the reference and uses exactly its keys."""
    g = _graph((1, 6, 6), [nn.Conv2d(1, 2, 1, stride=2, padding=1), Square(), nn.AvgPool2d(2),
                           nn.Conv2d(2, 1, 1, stride=2, padding=1), Square(), nn.AvgPool2d(2), nn.Flatten(),
                           nn.Linear(1, 1)], 0)
    prog = build_program(g)
    plan = plan_multi(prog, 1024)
    assert plan is not None
    _check_limited_keys(g, prog, plan)


def test_a_pruned_network_runs_on_seal_and_matches_the_reference():
    """A pruned network (a zeroed channel in each convolution, zeroed inputs of the dense layer) makes whole
    terms' plaintexts zero, and SEAL refuses a product by the zero polynomial ("result ciphertext is
    transparent"); such terms add nothing and are left out (`convpack_eval.is_zero_plaintext`). Fails without
    that with SEAL's RuntimeError; compared with the reference executor on SEAL ciphertexts."""
    from privinfer.protocols.he import HE
    torch.manual_seed(5)
    layers = [nn.Conv2d(1, 16, 3), Square(), nn.AvgPool2d(2), nn.Conv2d(16, 8, 3), Square(), nn.Flatten(),
              nn.Linear(200, 6)]
    with torch.no_grad():
        layers[0].weight[5].zero_(), layers[0].bias[5].zero_()
        layers[3].weight[2].zero_(), layers[3].bias[2].zero_()
        layers[6].weight[:, :50] = 0
    g = _graph((1, 16, 16), layers, 5, reinit=False)
    proto = HE(g, circuit_privacy="fast", conv_packing="on")
    plan = proto.plan
    rot = [it for it in proto.compiled.items if it.kind == "rot"]
    assert rot and sum(len(it.pts) for it in rot) < sum(len(it.step.keys) for it in rot)  # zero terms left out
    x = np.random.default_rng(3).random((1, 16, 16))
    out = _seal_slots(proto, x)
    ref = run_reference(g, x[None])[0]
    assert np.abs(out[plan.output_slots()] - ref).max() <= 1e-2 * max(1.0, np.abs(ref).max())
