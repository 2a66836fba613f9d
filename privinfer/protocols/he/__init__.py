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
This module holds the protocol class (what is prepared once per served model); one connection's two ends are
in `sides.py`, the result's re-randomization and flood in `result_noise.py`, the parameter search in
`params.py`.

Packings: `packing="latency"` (default; `latency.py`: one image per query, any number of convolutions and
linear layers) or `packing="batch"` (`batch.py`, written separately: one image per slot, N/2 images per slot
group, up to `executor.MAX_GROUPS` groups per query, evaluated in this process or as Ray tasks: `executor.py`).
Batch replies claim the input only, so a server in flood mode refuses them unless its operator allows them
(`allow_batch=True`; `HE.batch_allowed`).
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np

from ...errors import OptionRefusedError, ParameterError, PrivinferError, ProtocolError
from ...model.ir import Graph
from ..base import ClientSide, Protocol, ServerSide, register
from . import executor as hex_
from .context import CKKSContext
from .latency import CompiledPlan, LatencyPlan, SealBackend, plan_latency
from .params import DEFAULT_VALUE_BITS, HEParams, mask_options, select_params, value_bits_from_data
from .privacy import FloodPolicy
from .program import build_program, check_he_graph
from .result_noise import os_normal, rerandomize  # noqa: F401  (imported from here: convert, planner, tests)
from .sides import PACKINGS, _HEClient, _HEServer
from .sides import _KeyedContext, _load_public_tenseal, _tenseal_context  # noqa: F401  (imported from here)

__all__ = ["HE", "CKKSContext", "HEParams", "select_params", "plan_latency", "build_program", "rerandomize"]


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
                      "executor": None, "conv_packing": "auto", "allow_batch": None,
                      "progress": False}  # print the preparation steps on stderr (CLI serve, PrivateSession)  # batch packing: "local", "ray", "ray://HOST:PORT" or an executor
    client_options = {"packing": "latency", "batch_size": None}
    #: one machine (PrivateSession, the loopback bench): the client is the operator, batch packing is its choice
    local_session_defaults = {"allow_batch": True}
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
        if not (o["allow_batch"] is None or isinstance(o["allow_batch"], bool)):
            raise ParameterError(f"he: allow_batch must be true, false or unset, got {o['allow_batch']!r}")
        if o["executor"] is not None and not self.batch_allowed:  # it runs batch queries only: dead otherwise
            raise ParameterError("he: an executor runs batch-packed queries, which this server refuses "
                                 "(circuit_privacy='flood'): add allow_batch=true, or leave the executor unset")
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
    def batch_allowed(self) -> bool:
        """Whether clients may ask for batch packing. Its replies claim the input only (a flood below the batch
        engine's evaluation error, no cap), so a flood-mode server refuses it unless its operator allows it
        (`allow_batch=True`): otherwise any client could average batch replies around the weights that the
        latency replies' flood protects. Fast mode claims nothing about the weights: allowed."""
        allow = self.options["allow_batch"]
        return self.policy.mode != "flood" if allow is None else bool(allow)

    @property
    def privacy_warning(self) -> str | None:
        """Said when a server starts (`Server`): circuit-private mode asked for where its parameters cannot
        reach the target (`FloodPolicy.shortfall`). (`allow_batch=True` in flood mode is said by its name.)"""
        return self.policy.shortfall(self.latency_params)

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
        if packing == "batch" and not self.batch_allowed:
            raise OptionRefusedError("this server protects its weights with circuit_privacy='flood', which batch "
                                     "packing would not: batch packing is refused here (the operator can allow it "
                                     "with allow_batch=true); packing='latency', the default, is served")
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
