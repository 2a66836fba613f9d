"""The `he` protocol: CKKS homomorphic encryption (SEAL through TenSEAL's sealapi), CryptoNets/LoLa style.

Flow (one TCP connection)::

    client                                             server
    HELLO {protocol: he, options: {packing}}   ─────▶
                                               ◀─────  WELCOME {graph spec, info: CKKS params, rotation steps,
                                                                plan digest, input ciphertexts per image}
    create keys (secret key stays here)
    BLOBS [public key, relin key, Galois keys
           for exactly the plan's rotations]   ─────▶  load them, check they cover the plan
                                               ◀─────  JSON {ready}
    QUERY {batch} + BLOBS [ciphertexts]        ─────▶  evaluate, re-randomize, flood
      (batch packing: QUERY {batch, chunks} and that many BLOBS frames, encrypted and loaded as they go:
       batch_stream.py)
                                               ◀─────  BLOBS [one result ciphertext per image]

What is protected, precisely
----------------------------
* Input: the client's input is encrypted under CKKS with a key only the client holds; N, the coefficient
  modulus and every other parameter satisfy the HomomorphicEncryption.org 128-bit bounds (SEAL refuses
  anything else: `security_bits = 128`). The server sees ciphertexts, their count and sizes only.
* Keys: the server receives the public key, the relinearization key and Galois keys for the rotation steps its
  plan uses (powers of two), never the secret key (a test searches the client's traffic for it).
* Model: the weights stay on the server. Before a result leaves, the server (a) multiplies it by a 0/1
  plaintext that keeps one copy of each logit and zeroes every other slot (latency: a level of its own in
  circuit-private mode, 20 bits of the last prime in fast mode -- or, in fast mode, when a channel-packed
  plan's last segment writes each logit once, no plaintext of its own: that segment's plaintexts encode 0 on
  every other slot, so those slots keep only products by encoded zeros, ~2^-17 of their values measured
  (`convpack_plan.clean_output`, tested by decrypting every slot); batch: `mask_unused`, every slot past the
  batch the client sent), so what those slots held -- partial sums times
  the weights' encoding error, 2^-10 on cryptonets-mnist before issue 9, moving with a 1e-6 change of one
  weight -- is gone down to the mask's own encoding error; (b) adds a fresh public-key encryption of zero
  (re-randomization); (c) adds Gaussian noise of `flood_std` to every slot, real and imaginary parts (noise
  flooding). How large the flood is, and what it buys, is the `circuit_privacy` policy (`privacy.py`):
  "flood" (default: 2^-5 logit units on high-precision parameters -- scales ~2^50, x² rescaled on its own,
  the result left on two primes -- at most `max_queries` replies per key, default 128) or "fast" (2^-11,
  smallest parameters, no cap). `stats.privacy` reports the flood's margin over the estimated evaluation
  error and the statistical security it gives for the query cap; the guarantee is "cryptographic" only where
  that reaches the target (30 bits): cryptonets-mnist and tenseal-mnist do (30.5 bits at 128 replies per
  key; see privacy.py for the estimate and how it was checked).
* NOT protected: the architecture (layer kinds, shapes, polynomial coefficients of the activations) is public
  and sent in WELCOME; CKKS is approximate, so the logits carry an error plus the flood; the model is exposed
  to whatever the logits themselves reveal (model extraction by many queries is out of scope), and to
  averaging across sessions (the cap is per key). The threat model is semi-honest: a malicious server could
  compute a different function; a malicious client could send malformed keys (rejected with typed errors).

Engine: a query is the plan encrypt (plain@client -> cipher), HE segment, decrypt (-> plain@client), run
by `protocols/engine.py`'s loop; the step classes (`steps.py`) are the ones `hybrid` runs for its HE segments.

Packings: `packing="latency"` (default; `latency.py`: one image per query, any number of convolutions and
linear layers) or `packing="batch"` (`batch.py`, written separately: one image per slot, N/2 images per slot
group, up to `executor.MAX_GROUPS` groups per query, evaluated in this process or as Ray tasks: `executor.py`).
"""
from __future__ import annotations

import importlib
import math
import sys
import threading
import time

import numpy as np

from ...errors import ParameterError, PrivinferError, ProtocolError, QueryLimitError, ResourceLimitError
from ...model.ir import Graph
from ...privacy.mechanisms import NoiseSource
from ...transport import Channel
from ..base import ClientSide, Protocol, ServerSide, register
from ..engine import EngineClient, EngineServer
from . import executor as hex_
from .context import CKKSContext
from .latency import CompiledPlan, LatencyPlan, SealBackend, plan_latency
from .params import DEFAULT_VALUE_BITS, HEParams, mask_options, select_params, value_bits_from_data
from .privacy import CIRCUIT_PRIVACY_MODES, FloodPolicy
from .program import build_program, check_he_graph
from .steps import HEBatchDownload, HEBatchSegment, HEBatchUpload, HEDownload, HESegment, HEUpload

__all__ = ["HE", "CKKSContext", "HEParams", "select_params", "plan_latency", "build_program", "rerandomize"]

PACKINGS = ("latency", "batch")


def _batch_module():
    try:
        return importlib.import_module("privinfer.protocols.he.batch")
    except ModuleNotFoundError as e:
        if (e.name or "").startswith("privinfer"):
            raise ParameterError("packing='batch' needs privinfer.protocols.he.batch (the batch-packing engine), "
                                 "which is not available in this build; use packing='latency'") from None
        raise


def os_normal(n: int, std: float) -> np.ndarray:
    """n Gaussian samples of `std` from the OS CSPRNG (the DP mechanisms' `NoiseSource`): the flood must not
    come from a PRNG whose state its outputs could reveal (numpy's PCG64 state can be recovered from outputs)."""
    return NoiseSource().normal(std, n)


def rerandomize(ctx: CKKSContext, ct, flood_std: float, rng: np.random.Generator | None = None):
    """Add a fresh encryption of zero and complex Gaussian noise of `flood_std` (value units) to every slot
    (from the OS CSPRNG; `rng` only for reproducible tests)."""
    import tenseal.sealapi as seal
    zero = seal.Ciphertext()
    ctx.encryptor.encrypt_zero(ct.parms_id(), zero)
    zero.scale = ct.scale
    ctx.evaluator.add_inplace(ct, zero)
    if flood_std > 0:
        level = ctx.parms_ids.index(ct.parms_id())
        if rng is not None:
            noise = rng.normal(0.0, flood_std, ctx.slots) + 1j * rng.normal(0.0, flood_std, ctx.slots)
        else:
            noise = os_normal(ctx.slots, flood_std) + 1j * os_normal(ctx.slots, flood_std)
        ctx.evaluator.add_plain_inplace(ct, ctx.encode(noise, ct.scale, level))
    return ct


class _TenSEALView:
    """What `rerandomize` needs, over a TenSEAL context (the batch engine's context type)."""

    def __init__(self, tsctx):
        import tenseal.sealapi as seal
        self.seal = tsctx.seal_context().data
        self.evaluator = seal.Evaluator(self.seal)
        self.encoder = seal.CKKSEncoder(self.seal)
        self.encryptor = seal.Encryptor(self.seal, tsctx.public_key().data)
        self.slots = self.encoder.slot_count()
        self.parms_ids = []
        cd = self.seal.first_context_data()
        while cd is not None:
            self.parms_ids.append(cd.parms_id())
            cd = cd.next_context_data()

    encode = CKKSContext.encode

    def ct_from_bytes(self, data, what="ciphertext"):
        import tenseal.sealapi as seal
        from .context import load_into
        return load_into(seal.Ciphertext(), self.seal, data, what)

    ct_to_bytes = CKKSContext.ct_to_bytes


def _tenseal_context(params: HEParams):
    import tenseal as ts
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=params.N,
                     coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes))
    ctx.global_scale = 2.0 ** params.scale_bits
    return ctx


def _load_public_tenseal(blob: bytes, params: HEParams):
    import tenseal as ts
    try:
        ctx = ts.context_from(blob)
    except Exception as e:
        raise ProtocolError(f"public context rejected: {e}") from None
    if ctx.is_private() or ctx.has_secret_key():
        raise ProtocolError("the client sent a context holding its secret key; refusing it")
    if not (ctx.has_public_key() and ctx.has_relin_keys()):
        raise ProtocolError("the public context lacks the public or relinearization key")
    data = ctx.seal_context().data.first_context_data()
    if data.parms().poly_modulus_degree() != params.N or \
            len(data.parms().coeff_modulus()) != len(params.coeff_mod_bit_sizes) - 1:
        raise ProtocolError("the public context does not use the parameters of the WELCOME")
    ctx.global_scale = 2.0 ** params.scale_bits
    return ctx


class _KeyedContext(CKKSContext):
    """A per-connection view of the server's context: shares SEAL objects, holds this client's keys."""

    def __init__(self, base: CKKSContext):  # noqa: super().__init__ deliberately not called (shares state)
        self.__dict__.update({k: v for k, v in base.__dict__.items()})
        self.secret_key = self.public_key = self.relin_keys = self.galois_keys = None
        self.encryptor = self.decryptor = self._sym_encryptor = None


class _HEServer(EngineServer):
    def __init__(self, proto: "HE", packing: str, batch_size):
        self.proto, self.packing = proto, packing
        self.ctx: _KeyedContext | None = None
        self.par = None  # latency_par.ParSession (latency packing, when the plan has split steps)
        self.answered = 0  # replies (images) given under this session's key: the flood is sized for a cap
        if packing == "latency":
            self.params, self.steps = proto.latency_params, proto.plan.rotation_steps
        else:
            self.batch = _batch_module()
            self.stream = importlib.import_module("privinfer.protocols.he.batch_stream")
            self.params = proto.batch_params(int(batch_size or 1))
            self.steps = sorted(int(s) for s in self.batch.rotation_steps(proto.graph))
            if self.steps:
                raise ParameterError("the batch engine asks for rotations; TenSEAL cannot make per-step keys")

    def welcome(self) -> dict:
        info = {"packing": self.packing, "params": self.params.to_json(), "rotation_steps": list(self.steps),
                "flood_std": self.proto.policy.flood_std, "out_dim": int(np.prod(self.proto.graph.output_shape)),
                "max_batch": self.max_batch, "circuit_privacy": self.proto.policy.to_json()}
        if self.packing == "latency":
            info.update(plan_digest=self.proto.plan.digest(), input_cts=self.proto.plan.input.n_ct,
                        conv_packing=self.proto.program.conv_packing)
            if self.proto.plan.choices is not None:  # the client replays them instead of searching (set-up)
                info["plan_choices"] = self.proto.plan.choices
        else:
            info["batch_stream"] = True  # accepts the ciphertexts in several frames (batch_stream.py)
        return info

    @property
    def max_batch(self) -> int:
        return int(self.proto.options["max_batch"]) if self.packing == "latency" else \
            self.params.slots * hex_.MAX_GROUPS

    def setup(self, ch: Channel) -> None:
        blobs = ch.recv_blobs()
        if self.packing == "latency":
            ctx = _KeyedContext(self.proto.ctx)
            ctx.load_public(blobs, self.steps)
            self.ctx = ctx
            from . import latency_par
            if latency_par.enabled() and self.proto.compiled.splits:  # a share of each query on the 2nd core
                self.par = latency_par.ParSession(self.proto.compiled, ctx, blobs)
        else:
            if len(blobs) != 1:
                raise ProtocolError(f"expected one public TenSEAL context, got {len(blobs)} blobs")
            self.ctx = _load_public_tenseal(blobs[0], self.params)
            self.view = _TenSEALView(self.ctx)
            self.job = self.proto.executor.open(self.ctx)  # evaluation keys go to the executor once
        self.chain = self._chain()
        ch.send_json({"ready": True})

    def _chain(self) -> list:
        """The one-segment plan: encrypt, HE segment (the whole graph), decrypt (`steps.py`)."""
        if self.packing == "batch":
            return [HEBatchUpload(self, False), HEBatchSegment(self, False), HEBatchDownload(self, False)]
        p = self.proto
        return [HEUpload(self.ctx, p.plan, 2.0 ** self.params.input_scale_bits, client=False,
                         n_primes=len(self.params.coeff_mod_bit_sizes) - 1),  # data primes at the top level
                HESegment(p.compiled, self.ctx, 0, len(p.graph.layers), par=self.par),
                HEDownload(self.ctx, client=False, flood_std=p.policy.flood_std)]

    def prepare(self, ch: Channel, meta: dict) -> None:
        B = int(meta["batch"])
        if B > self.max_batch:
            raise ResourceLimitError(f"batch {B} exceeds this session's limit of {self.max_batch} "
                                     f"({self.packing} packing)")
        cap = self.proto.policy.cap(self.params)
        if cap is not None and self.answered + B > cap:
            raise QueryLimitError(f"this session has had {self.answered} replies; {B} more exceed the cap of {cap} "
                                  f"per key that the flood's statistical margin is sized for (open a new session: "
                                  f"a fresh key)")
        self.answered += B
        self.chunks = meta.get("chunks", 1)  # batch packing: the ciphertexts arrive in this many frames

    def _finish(self, blob: bytes) -> bytes:
        ct = self.view.ct_from_bytes(blob, "batch result")
        return self.view.ct_to_bytes(rerandomize(self.view, ct, self.proto.policy.flood_std))

    def close(self) -> None:
        if getattr(self, "job", None) is not None:
            self.job.close()
        if self.par is not None:
            self.par.close()
            self.par = None
        self.ctx = self.job = None
        self.chain = ()


class _HEClient(EngineClient):
    def __init__(self, welcome: dict, graph: Graph, packing: str):
        try:
            info_packing = welcome["packing"]
            self.params = HEParams.from_json(welcome["params"])
            self.steps = [int(s) for s in welcome["rotation_steps"]]
            self.flood_std = float(welcome.get("flood_std", 0.0))
            self.policy = FloodPolicy.from_json(welcome["circuit_privacy"])
            self.out_dim = int(welcome["out_dim"])
            self.max_batch = int(welcome.get("max_batch", 1))
            self.streamed = welcome.get("batch_stream") is True  # else: one frame, as older servers expect
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed HE WELCOME: {e!r}") from None
        if info_packing != packing:
            raise ProtocolError(f"server set up packing {info_packing!r}, client asked for {packing!r}")
        self.packing, self.graph = packing, graph
        if self.params.security_bits != 128:
            raise ProtocolError("server proposed parameters below 128-bit security")
        if packing == "latency":
            self.prog = build_program(graph, structure_only=True)  # the client needs the public structure only
            self.prog.conv_packing = str(welcome.get("conv_packing", "auto"))
            choices = welcome.get("plan_choices")
            if choices is not None and not isinstance(choices, dict):
                raise ProtocolError("malformed HE WELCOME: plan_choices must be an object")
            self.prog.plan_choices = choices
            try:
                self.plan: LatencyPlan = plan_latency(self.prog, self.params.slots)
            except ParameterError as e:
                raise ProtocolError(f"the server's packing plan cannot be derived here: {e}") from None
            if self.plan.digest() != welcome.get("plan_digest") or self.steps != self.plan.rotation_steps:
                raise ProtocolError("the server's packing plan differs from the one derived from the public "
                                    "architecture (different privinfer versions?)")
        else:
            self.batch = _batch_module()
            self.stream = importlib.import_module("privinfer.protocols.he.batch_stream")
            if sorted(self.steps) != sorted(int(s) for s in self.batch.rotation_steps(graph)):
                raise ProtocolError("the server asks for rotation keys the batch engine does not use")
        self.ctx: CKKSContext | None = None
        self.answered = 0

    def query_meta(self, x: np.ndarray) -> dict:
        B = int(x.shape[0])
        limit = self.max_batch if self.packing == "latency" else self.params.slots * hex_.MAX_GROUPS
        if B > limit:
            raise ResourceLimitError(f"batch {B} exceeds this session's limit of {limit} ({self.packing} packing)")
        cap = self.policy.cap(self.params)
        if cap is not None and self.answered + B > cap:
            raise QueryLimitError(f"{self.answered} replies so far; {B} more exceed the server's cap of {cap} per "
                                  f"key (circuit-private mode); open a new session")
        self.answered += B
        if self.packing == "batch" and self.streamed:  # the ciphertexts follow in this many frames
            return {"batch": B, "chunks": self.stream.n_chunks(B, self.params.slots, int(np.prod(self.graph.input_shape)))}
        return {"batch": B}

    def setup(self, ch: Channel) -> None:
        say = self.report or (lambda msg: None)
        if self.packing == "latency":
            t0 = time.perf_counter()
            say(f"generating keys (N={self.params.N}, {len(self.params.coeff_mod_bit_sizes)} primes): public, "
                f"relinearization and {len(self.steps)} Galois keys ...")
            self.ctx = CKKSContext.create(self.params, self.steps)
            blobs = self.ctx.public_blobs()
            t1 = time.perf_counter()
            say(f"keys generated in {t1 - t0:.1f} s; sending {sum(map(len, blobs)) / 1e6:.1f} MB ...")
            ch.send_blobs(blobs)
        else:
            self.ctx = _tenseal_context(self.params)
            ch.send_blobs([self.ctx.serialize(save_public_key=True, save_secret_key=False,
                                              save_galois_keys=False, save_relin_keys=True)])
        reply = ch.recv_json()
        if not reply.get("ready"):
            raise ProtocolError(f"server did not accept the keys: {reply}")
        if self.packing == "latency":
            say(f"keys sent and loaded by the server in {time.perf_counter() - t1:.1f} s")
            self.chain = [HEUpload(self.ctx, self.plan, 2.0 ** self.params.input_scale_bits, client=True),
                          HESegment(), HEDownload(self.ctx, client=True, out_slots=self.plan.output_slots())]
        else:
            self.chain = [HEBatchUpload(self, True), HEBatchSegment(self, True), HEBatchDownload(self, True)]

    def privacy(self) -> dict:
        p = self.params
        out = {"protocol": "he", "scheme": "CKKS (approximate arithmetic)", "security_bits": p.security_bits,
               "poly_modulus_degree": p.N, "coeff_modulus_bits": p.total_bits, "packing": self.packing,
               "input_private": True, "architecture_public": True,
               "threat_model": "semi-honest server and client",
               "secret_key_location": "client only",
               "galois_keys_sent": len(self.steps),
               "output_rerandomized": True,
               "non_logit_slots_masked": True}
        out.update(self.policy.report(p))
        return out

    def close(self) -> None:
        self.ctx = None
        self.chain = ()


def _stage_printer(show: bool):
    """`say(what)`: one stderr line per preparation stage with the time since the previous one."""
    last = [time.perf_counter()]

    def say(what: str) -> None:
        now = time.perf_counter()
        if show:
            print(f"privinfer: he: server: {what} ({now - last[0]:.1f} s)", file=sys.stderr, flush=True)
        last[0] = now
    return say


def _n_plaintexts(compiled) -> int:
    return sum(len(item.pts) for item in compiled.items)


def _value_bits_for_range(graph: Graph, vb, explicit: bool):
    """CKKS wraps silently past its modulus: give every value the inputs in the published range can reach
    room. q0 holds output_scale + value_bits + 2 bits, so logits below 2^value_bits decrypt with a factor-4
    margin; intermediates sit at higher levels with more room still (see params.py)."""
    if graph.input_range is None:
        return vb
    from ...model.bounds import peak_bits
    need = peak_bits(graph)
    if explicit and vb < need:
        raise ParameterError(f"value_bits={vb} is too small: inputs in {list(graph.input_range)} can reach "
                             f"2^{need}, which would wrap; use value_bits >= {need}")
    return max(need, vb if vb is not None else DEFAULT_VALUE_BITS)


@register
class HE(Protocol):
    name = "he"
    summary = "CKKS homomorphic encryption (SEAL via TenSEAL): input encrypted, weights stay on the server"
    server_options = {"calibration": None, "value_bits": None, "max_batch": 64, "flood_std": None,
                      "circuit_privacy": "flood", "max_queries": None, "statistical_security": 30,
                      "executor": None, "conv_packing": "auto",
                      "progress": False}  # print the preparation steps on stderr (CLI serve, PrivateSession)  # batch packing: "local", "ray", "ray://HOST:PORT" or an executor
    client_options = {"packing": "latency", "batch_size": None}
    supported_kinds = ("conv2d", "linear", "avgpool2d", "flatten", "poly")

    @classmethod
    def check_graph(cls, graph: Graph) -> None:
        check_he_graph(graph)  # names the layer and points to make_he_friendly

    def __init__(self, graph: Graph, **options):
        super().__init__(graph, **options)
        self._say = _stage_printer(bool(self.options["progress"]))
        self.program = build_program(graph)
        self._say("network rewritten into affine segments")
        if self.options["conv_packing"] not in ("auto", "on", "off"):
            raise ParameterError(f"he: conv_packing must be 'auto', 'on' or 'off', got {self.options['conv_packing']!r}")
        self.program.conv_packing = self.options["conv_packing"]  # channel packing (convpack): public choice
        cal = self.options["calibration"]
        vb = self.options["value_bits"]
        if vb is None:
            vb = value_bits_from_data(self.program, cal) if cal is not None else None
        vb = _value_bits_for_range(graph, vb, explicit=self.options["value_bits"] is not None)
        self.value_bits = vb
        o = self.options
        self.policy = FloodPolicy.make(o["circuit_privacy"], o["flood_std"], o["max_queries"], o["statistical_security"])
        self.flood_std = self.policy.flood_std
        self._lock = threading.Lock()
        self._latency = None
        self._batch_params: dict[int, HEParams] = {}
        self._build_latency()  # parameters, plan and plaintexts once per served model; errors surface now
        self.executor = hex_.get_executor(self.options["executor"])

    def _build_latency(self):
        with self._lock:
            if self._latency is None:
                params = select_params(self.program, "latency", value_bits=self.value_bits, mask=True,
                                       flood=self.policy.mode == "flood")
                plan = plan_latency(self.program, params.slots)
                self._say(f"parameters {params.describe()}; {plan.describe().splitlines()[0][len('latency plan: '):]}")
                ctx = CKKSContext.for_params(params)
                compiled = CompiledPlan(plan, self.program, SealBackend(ctx),
                                        input_scale=2.0 ** params.input_scale_bits, drop_primes=ctx.drop_primes,
                                        scale_bits=params.scale_bits, output_scale_bits=params.output_scale_bits,
                                        **mask_options(params))
                self._say(f"weights encoded as {_n_plaintexts(compiled)} plaintexts")
                self._latency = (params, plan, ctx, compiled)
        return self._latency

    def batch_params(self, batch_size: int) -> HEParams:
        """Batch-packing parameters, chosen once per batch size (the engine's own planner is slow)."""
        with self._lock:
            if batch_size not in self._batch_params:
                self._batch_params[batch_size] = select_params(self.graph, "batch", value_bits=self.value_bits,
                                                               batch=batch_size)
            return self._batch_params[batch_size]

    @property
    def latency_params(self) -> HEParams:
        return self._build_latency()[0]

    @property
    def plan(self) -> LatencyPlan:
        return self._build_latency()[1]

    @property
    def ctx(self) -> CKKSContext:
        return self._build_latency()[2]

    @property
    def compiled(self) -> CompiledPlan:
        return self._build_latency()[3]

    def server_side(self, client_options: dict) -> ServerSide:
        packing = client_options.get("packing", "latency")
        if packing not in PACKINGS:
            raise ProtocolError(f"packing must be one of {PACKINGS}, got {packing!r}")
        if packing == "latency":
            from . import latency_par
            latency_par.warm(self.compiled, self.latency_params)  # helper + plan shares while keys come
        return _HEServer(self, packing, client_options.get("batch_size"))

    @classmethod
    def validate_client_options(cls, options: dict) -> dict:
        opts = super().validate_client_options(options)
        if opts["packing"] not in PACKINGS:
            raise PrivinferError(f"he: packing must be one of {PACKINGS}, got {opts['packing']!r}")
        bs = opts["batch_size"]
        if bs is not None and (not isinstance(bs, int) or bs < 1):
            raise PrivinferError(f"he: batch_size must be a positive integer, got {bs!r}")
        return opts

    @classmethod
    def client_side(cls, welcome: dict, graph: Graph, **client_options) -> ClientSide:
        return _HEClient(welcome, graph, client_options.get("packing", "latency"))
