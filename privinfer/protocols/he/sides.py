"""The two ends of one `he` connection: the server's side (keys, query cap, evaluation) and the client's.

Why apart from the protocol class (`__init__.py`): the class holds what is prepared once per served model
(parameters, plan, encoded weights) and is what `register` publishes; these hold what one connection adds
(the client's keys, its reply count, its helper share) and speak the wire protocol drawn in the package
docstring. The batch packing's TenSEAL context helpers are here because only these two sides use them.
"""
from __future__ import annotations

import importlib
import time
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ParameterError, ProtocolError, QueryLimitError, ResourceLimitError
from ...model.ir import Graph
from ...transport import Channel
from ..engine import EngineClient, EngineServer
from . import executor as hex_
from .context import CKKSContext
from .latency import LatencyPlan, plan_latency
from .params import HEParams
from .privacy import FloodPolicy
from .program import build_program
from .result_noise import _TenSEALView, rerandomize
from .steps import HEBatchDownload, HEBatchSegment, HEBatchUpload, HEDownload, HESegment, HEUpload

if TYPE_CHECKING:  # the protocol class imports this module
    from . import HE

PACKINGS = ("latency", "batch")


def _batch_module():
    """The batch engine, imported only when a connection asks for batch packing (it pulls in more)."""
    try:
        return importlib.import_module("privinfer.protocols.he.batch")
    except ModuleNotFoundError as e:
        if (e.name or "").startswith("privinfer"):
            raise ParameterError("packing='batch' needs privinfer.protocols.he.batch (the batch-packing engine), "
                                 "which is not available in this build; use packing='latency'") from None
        raise


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


