"""he: privacy of the server's side -- scratch files the peer's bytes pass through, and a WELCOME that says
nothing about the weights (issue 9, section 3)."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

pytest.importorskip("tenseal")

from privinfer.model.ir import Conv2d, Flatten, Graph, Linear, Poly  # noqa: E402
from privinfer.protocols.he import context as hectx  # noqa: E402
from privinfer.transport.frames import encode_json  # noqa: E402


def test_scratch_files_live_in_a_private_directory_and_never_follow_a_planted_symlink(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    # the old code wrote to /dev/shm/privinfer-he-<pid>-<thread>-<n>: plant symlinks at those names
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    planted = []
    if shm and os.access(shm, os.W_OK):
        import threading
        for n in range(8):
            p = os.path.join(shm, f"privinfer-he-{os.getpid()}-{threading.get_ident()}-{n}")
            if not os.path.lexists(p):
                os.symlink(victim, p)
                planted.append(p)
    try:
        from privinfer.protocols.he.params import HEParams
        params = HEParams(N=4096, coeff_mod_bit_sizes=(40, 20, 40), scale_bits=20, depth=1, slots=2048)
        ctx = hectx.CKKSContext.create(params)
        blob = ctx.encrypt(np.arange(4.0))
        assert np.allclose(ctx.decrypt(blob)[:4], np.arange(4.0), atol=1e-2)  # dump + load round trip
        d = hectx._private_dir()
        mode = stat.S_IMODE(os.lstat(d).st_mode)
        assert mode == 0o700 and os.lstat(d).st_uid == os.getuid() and not os.path.islink(d)
        # a file is always created fresh: a symlink planted at the next name is refused, not followed
        monkeypatch.setattr(hectx, "_counter", iter([10 ** 9]))
        import threading
        trap = os.path.join(d, f"{threading.get_ident()}-{10 ** 9}")
        os.symlink(victim, trap)
        with pytest.raises(FileExistsError):
            hectx.dump(ctx.public_key)
        os.unlink(trap)
        assert victim.read_bytes() == b"precious"
    finally:
        for p in planted:
            os.unlink(p)


def _small_net(seed: int, scale: float = 1.0) -> Graph:
    rng = np.random.default_rng(seed)
    return Graph((1, 8, 8), (Conv2d(rng.normal(0, 0.3 * scale, (2, 1, 3, 3)), rng.normal(0, 0.1, 2), stride=(2, 2)),
                             Poly((0.0, 0.0, 1.0)), Flatten(),
                             Linear(rng.normal(0, 0.2 * scale, (4, 18)), rng.normal(0, 0.1, 4))))


def _welcome_bytes(graph: Graph, protocol: str, options: dict) -> bytes:
    """The WELCOME frame's payload exactly as a real server sends it over TCP."""
    from privinfer.server import serve
    from privinfer.transport import Channel
    from privinfer.transport.frames import FrameType
    import socket
    srv = serve(graph, protocol)
    try:
        with Channel(socket.create_connection(("127.0.0.1", srv.port), timeout=30)) as ch:
            ch.send_json({"protocol": protocol, "options": options}, FrameType.HELLO)
            ftype, payload = ch.recv_frame()
            assert ftype == FrameType.WELCOME
            return payload
    finally:
        srv.shutdown()


# he batch packing is left out on purpose: its coefficient chain is searched on the weights' overflow bounds
# (a weight-free search left too little precision once the output mask was added; notes/he-privacy.md)
@pytest.mark.parametrize("protocol,options", [("he", {"packing": "latency"}), ("plain", {})])
def test_welcome_is_a_function_of_the_architecture_only(protocol, options):
    a, b = _small_net(1), _small_net(2, scale=1.7)  # same architecture, other weights and magnitudes
    wa, wb = _welcome_bytes(a, protocol, options), _welcome_bytes(b, protocol, options)
    assert wa == wb
    assert b"precision_bits" not in wa
    # and the comparison can fail: another architecture gives another WELCOME
    other = Graph((1, 8, 8), a.layers[:3] + (Linear(np.ones((3, 18)), np.zeros(3)),))
    assert _welcome_bytes(other, protocol, options) != wa


# --- circuit privacy: the averaging attack (issue 9, section 1) -------------------------------------------
def _wide_net() -> Graph:
    """CryptoNets' shape, smaller: conv 5 maps -> x^2 -> linear 100 -> x^2 -> linear 10; the middle layer's
    packing leaves partial sums in slots that the last layer's weights (and their encoding error) touch."""
    rng = np.random.default_rng(7)
    return Graph((1, 16, 16), (Conv2d(rng.normal(0, 0.4, (5, 1, 5, 5)), rng.normal(0, 0.1, 5), stride=(2, 2)),
                               Poly((0.0, 0.0, 1.0)), Flatten(),
                               Linear(rng.normal(0, 0.1, (100, 180)), rng.normal(0, 0.1, 100)),
                               Poly((0.0, 0.0, 1.0)),
                               Linear(rng.normal(0, 0.3, (10, 100)), rng.normal(0, 0.1, 10))))


class _Oracle:
    """The server's evaluation path (`_HEServer.query`: compiled plan, mask, re-randomization, flood) for one
    client key, in process: the attack needs ~100 replies, the TCP path is tested elsewhere. `legacy=True`
    compiles the plan without the output mask, as privinfer did before issue 9 (the control arm)."""

    def __init__(self, graph: Graph, mode: str, legacy: bool = False, **options):
        from privinfer.protocols.he import HE, _KeyedContext
        from privinfer.protocols.he.latency import CompiledPlan, NumpyBackend, SealBackend, client_vectors
        self.he = HE(graph, circuit_privacy=mode, **options)
        p, plan, base = self.he.latency_params, self.he.plan, self.he.ctx
        self.compiled = self.he.compiled
        if legacy:  # the pre-issue server: parameters without the mask's budget, no mask
            from privinfer.protocols.he import plan_latency, select_params
            p = select_params(self.he.program, "latency", value_bits=self.he.value_bits)
            plan, base = plan_latency(self.he.program, p.slots), hectx.CKKSContext.for_params(p)
            self.compiled = CompiledPlan(plan, self.he.program, SealBackend(base),
                                         input_scale=2.0 ** p.input_scale_bits, drop_primes=base.drop_primes,
                                         scale_bits=p.scale_bits, output_scale_bits=p.output_scale_bits)
        self.plan = plan
        self.client = hectx.CKKSContext.create(p, plan.rotation_steps)
        self.server = _KeyedContext(base)
        self.server.load_public(self.client.public_blobs(), plan.rotation_steps)
        self.scale = 2.0 ** p.input_scale_bits
        self.vectors = lambda x: client_vectors(plan, x)
        # what the client can compute without the weights: the slot layout of the logits (copies and exact
        # zeros of the plan, filled from f(x)), times the public 0/1 mask as encoded (its encoding error)
        self.exact = lambda x: CompiledPlan(plan, self.he.program, NumpyBackend(plan.slots)).evaluate(
            list(self.vectors(x)))
        last = self.compiled.items[-1]
        self.mask = 1.0 if legacy else np.asarray(self.client.encoder.decode_double(last.const))

    def public(self, x) -> np.ndarray:
        return self.exact(x) * self.mask

    def evaluate(self, x) -> bytes:
        """The server's result for one fresh encryption of `x`, before re-randomization and flood."""
        from privinfer.protocols.he.latency import SealBackend
        cts = [self.server.ct_from_bytes(self.client.encrypt(v, self.scale), level=0) for v in self.vectors(x)]
        return self.server.ct_to_bytes(self.compiled.evaluate(cts, backend=SealBackend(self.server)))

    def reply(self, x=None, flood: bool = True, evaluated: bytes | None = None) -> np.ndarray:
        """Every slot the client decrypts (logits and masked slots): one fresh encryption of `x`, or the
        re-randomized and flooded copy of an `evaluated` result."""
        from privinfer.protocols.he import rerandomize
        out = self.server.ct_from_bytes(evaluated if evaluated is not None else self.evaluate(x))
        rerandomize(self.server, out, self.he.policy.flood_std if flood else 0.0)
        return self.client.decrypt(self.server.ct_to_bytes(out))


def _corr(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


@pytest.mark.parametrize("mode,options", [("flood", {}),
                                          pytest.param("fast", {"legacy": True}, marks=pytest.mark.slow)],
                         ids=["circuit-private", "control-pre-issue-server"])  # the control arm (14 s) checks the judge
def test_averaging_attack_on_the_weights_evaluation_error(mode, options):
    """What the attacker wants: the evaluation error d(x, W) = E[reply] - public(x) over every slot it
    decrypts, where public(x) is what it can compute from the network's output alone (the logits f(x) in
    their slots, exact zeros elsewhere, times the public mask). d is a function of the weights beyond f(x):
    issue 9 found it in the non-logit slots at 2^-10, moving with a 1e-6 change of one weight. The attacker
    here has more than a real one: the exact plaintext output f(x). Its estimate of d from k replies to one
    input is mean(replies) - public(x). The judge knows the weights: it gets the noise-free d by averaging 8
    replies of the very same server computation *without the flood* (the random part averages out).
    Circuit-private mode: 64 replies must be no better than one (correlation with d within the statistical
    tolerance). The control arm is the pre-issue server (no output mask, its parameters, the old 2^-11 flood):
    the attack must succeed there, so the test can fail. ~10 s per arm on an idle 2-core machine (~45 s each
    under a load average of 7)."""
    g = _wide_net()
    x = np.random.default_rng(3).random((1, 16, 16))
    o = _Oracle(g, mode, **options)
    public = o.public(x)
    if mode == "flood":
        # N=16384, 9 primes: 8 evaluations, each re-randomized and flooded 8 times for the attacker's 64
        # replies. This favours the attacker: its 64 replies share the 8 evaluations' random error with the
        # judge's d, so only the flood stands between its average and d.
        evals = [o.evaluate(x) for _ in range(8)]
        clean = np.array([o.reply(flood=False, evaluated=e) for e in evals]) - public
        replies = np.array([o.reply(evaluated=e) for e in evals for _ in range(8)]) - public
    else:
        # 32 flood-free replies: the judge's d must be sharper than what the attacker averages, or the control
        # arm is itself noisy (with 8 it failed about one run in three: correlations 0.15-0.48)
        clean = np.array([o.reply(x, flood=False) for _ in range(32)]) - public
        replies = np.array([o.reply(x) for _ in range(64)]) - public
    d = clean.mean(axis=0)                                                       # judge's noise-free d
    one = _corr(replies[0], d)
    avg = _corr(replies.mean(axis=0), d)
    tol = 4.0 / np.sqrt(len(d))                        # 4 sigma of a correlation of n independent pairs
    if mode == "flood":
        assert avg <= one + tol and abs(avg) <= tol, (one, avg)
        # the flood is sized from an estimate of the evaluation error: it must bound every slot of every
        # flood-free reply, with 2 bits to spare (notes/flood30.md: >= 3 bits on the zoo networks)
        from privinfer.protocols.he.privacy import FloodPolicy
        est = FloodPolicy.evaluation_noise(o.he.latency_params)
        assert np.abs(clean).max() <= est / 4, (np.log2(np.abs(clean).max()), np.log2(est))
        assert o.he.policy.report(o.he.latency_params)["guarantee"] == "cryptographic"
        # and the flood did not cost the answer: the logits are within 5 flood stds
        assert np.abs(replies[0][o.plan.output_slots()]).max() <= 5 * o.he.policy.flood_std + 1e-3
    else:
        # the attack works: the average of 64 replies carries d (measured 0.64 and 0.72 in two runs; a single
        # reply gave 0.11 and 0.73: without the mask the non-logit slots' d can exceed the 2^-11 flood in one
        # reply already). The ceiling is the judge's own 8-reply estimate of d.
        assert avg > 0.5 and avg >= one - tol, (one, avg)


def test_circuit_private_is_the_default_caps_queries_per_key_and_reports_its_margin():
    import privinfer
    from privinfer.errors import PeerError, QueryLimitError
    g = _small_net(1)
    srv = privinfer.serve(g, "he", max_queries=3)          # circuit_privacy="flood" by default
    try:
        x = np.random.default_rng(0).random((2, 1, 8, 8))
        with privinfer.connect("127.0.0.1", srv.port, "he") as s:
            got = s.infer(x)
            priv = s.stats.privacy
            with pytest.raises(QueryLimitError):            # 2 + 2 > 3: refused by the client, typed
                s.infer(x)
        from privinfer.model.reference import run_reference
        assert np.abs(got - run_reference(g, x)).max() <= 5 * priv["flood_std"] + 1e-3
        assert priv["circuit_privacy"] == "flood" and priv["max_queries_per_key"] == 3
        assert priv["flood_std"] == 2.0 ** -5 and priv["non_logit_slots_masked"]
        assert priv["flood_margin_bits"] > 0 and "statistical_security_bits" in priv
        # the guarantee says "cryptographic" only when the achieved figure reaches the target
        want = "cryptographic" if priv["statistical_security_bits"] >= 30 else "cryptographic-input-only"
        assert priv["guarantee"] == want
        # the server enforces the cap too, whatever the client does (a session that skips its own check)
        with privinfer.connect("127.0.0.1", srv.port, "he") as s:
            s.client.policy = type(s.client.policy).make("fast")   # a client that ignores the cap
            s.infer(x)
            with pytest.raises(PeerError, match="QueryLimitError"):
                s.infer(x)
    finally:
        srv.shutdown()


def test_batch_packing_answers_only_the_images_paid_for():
    """A one-image batch query: every other slot of every result is masked (mask_unused), so the client
    decrypts one answer and noise, not the model applied to 4095 more inputs."""
    from privinfer.protocols.he import batch as hb
    g = _small_net(1)
    x = np.random.default_rng(0).random((1, 1, 8, 8))
    # the server's evaluation (as _HEServer.query calls it), looking at every slot of the results
    from privinfer.protocols.he import HE, _load_public_tenseal
    he = HE(g, circuit_privacy="fast")
    params = he.batch_params(1)
    ctx = hb.make_context(params.N, list(params.coeff_mod_bit_sizes), params.scale_bits)
    pub = _load_public_tenseal(ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                                             save_relin_keys=True), params)
    blobs = hb.client_encrypt(ctx, x)
    from privinfer.protocols.he import batch_rns as rns
    kit = rns.get_kit(ctx)
    for masked in (True, False):
        out = hb.server_evaluate(pub, g, blobs, 1, mask_unused=masked)
        import tenseal.sealapi as seal
        pt = seal.Plaintext()
        kit.decryptor.decrypt(rns.load_ciphertext(kit, out[0], "r"), pt)
        rest = np.abs(np.asarray(kit.encoder.decode_double(pt))[1:]).max()
        if masked:
            assert rest < 1e-2, rest
        else:
            assert rest > 1e-2  # control: without the mask the other slots hold f(0), the model's bias path


def test_scratch_dirs_of_dead_processes_are_removed(tmp_path):
    """A process killed before its atexit hook leaves its tmpfs directory behind; the next one removes it."""
    import subprocess
    import sys as _sys

    from privinfer.protocols.he import scratch
    dead = subprocess.run([_sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    orphan = tmp_path / f"{scratch.PREFIX}{dead_pid}-abc"
    orphan.mkdir()
    (orphan / "arr.bin").write_bytes(b"x" * 1024)
    alive = tmp_path / f"{scratch.PREFIX}{os.getpid()}-def"
    alive.mkdir()
    target = tmp_path / "not-ours"
    target.mkdir()
    link = tmp_path / f"{scratch.PREFIX}{dead_pid}-link"
    link.symlink_to(target)
    removed = scratch.remove_orphans(str(tmp_path))
    assert removed == [str(orphan)] and not orphan.exists()
    assert alive.exists() and link.is_symlink() and target.exists()


@pytest.mark.parametrize("model,reached", [("cryptonets-mnist", True), ("tenseal-mnist", True),
                                           ("secureml-mnist", False)])
def test_circuit_private_parameters_reach_the_target_where_the_chain_allows(model, reached):
    """The automatic parameters of circuit-private mode buy >= 30 bits of statistical security (Li-Micciancio-
    Schultz-Sorrell, 128 replies per key) on the CryptoNets-style zoo networks; where they cannot (secureml:
    its dense first layer caps the primes at 50 bits) the report says so instead of claiming it."""
    from privinfer.protocols.he import _value_bits_for_range
    from privinfer.protocols.he.params import select_params
    from privinfer.protocols.he.privacy import FloodPolicy
    from privinfer.zoo import load_model
    g = load_model(model)
    params = select_params(g, "latency", value_bits=_value_bits_for_range(g, None, False), mask=True, flood=True)
    rep = FloodPolicy.make("flood").report(params)
    assert rep["max_queries_per_key"] == 128 and rep["flood_std"] == 2.0 ** -5
    assert (rep["statistical_security_bits"] >= 30) == reached, rep
    assert rep["guarantee"] == ("cryptographic" if reached else "cryptographic-input-only")
    assert rep["model_private"] == reached
    fast_params = select_params(g, "latency", value_bits=params.value_bits, mask=True)
    fast = FloodPolicy.make("fast").report(fast_params)
    assert fast["guarantee"] == "cryptographic-input-only" and not fast["model_private"]
    # the operator is told where flood mode falls short (the server prints it when it starts), never otherwise
    said = FloodPolicy.make("flood").shortfall(params)
    assert (said is None) == reached
    if not reached:
        q = 2 * rep["flood_margin_bits"] - 6  # the LMSS bound 2m - log2(64 q) reaches 0 at q = 2^(2m - 6)
        assert f"falls short of its 30-bit target" in said and f"after about 2^{q:.0f} replies" in said
        assert f"N={params.N}" in said and "no query cap" in said and "no flood margin at all" in said
        tiny = FloodPolicy.make("flood", flood_std=2.0 ** -40).shortfall(params)  # a flood below the error
        assert "below the evaluation error" in tiny and "bits above" not in tiny
        thin = FloodPolicy.make("flood", flood_std=4 * FloodPolicy.evaluation_noise(params)).shortfall(params)
        assert "only 2.0 bits above the evaluation error, a bound spent by one reply" in thin  # no "2^-2 replies"
    assert FloodPolicy.make("fast").shortfall(fast_params) is None


def test_the_flood_is_gaussian_from_the_os():
    """`rerandomize`'s flood comes from the OS CSPRNG (review finding: a seeded PCG64 stream before); its
    samples have the stated standard deviation and a normal shape."""
    from scipy import stats as st

    from privinfer.protocols.he import os_normal
    z = os_normal(20000, 0.5)
    assert abs(z.std() - 0.5) < 0.02 and abs(z.mean()) < 0.02
    assert st.kstest(z / 0.5, "norm").pvalue > 1e-4
