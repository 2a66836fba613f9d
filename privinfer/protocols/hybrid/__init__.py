"""`hybrid`: one network, layers split between HE (BFV or CKKS) and 2PC secret sharing by a plan (GAZELLE-style).

    PrivateSession(model, protocol="hybrid", plan="he:0,ss:1-2,he:3,ss:4-5,he:6-7,ss:8,he:9")

The plan (`privinfer.planner.plan`) assigns `he` or `ss` to every layer; the server validates it against the
graph (a ReLU or MaxPool in an HE segment, or a layer without a protocol, is a typed error naming the layer).
Plans may also hold `plain` segments (run at the client in the clear, on weights the server sends in the
set-up: model privacy of those layers is given up) and a final `noisy` segment (the client releases the
layer's input with epsilon-DP, the server runs the rest in the clear: `noisy`'s steps and options). An HE or ss
segment followed by either ends with its result at the client in the clear (`privacy()` names the layers).
The loop is the engine's (`protocols/engine.py`): the chain of steps below is built from the plan on each side.

One TCP connection per session carries everything: WELCOME (plan, per-HE-segment parameters), the keys of
every HE segment once, the `ss` set-up once (one CrypTen group and one dealer serve every ss segment), then
per query: the ss offline phase for the whole plan (one dealer batch) is STARTED, the segments run in order,
and the offline phase is collected right before the first ss segment (`steps.OfflineCollect`): the dealer's
and both parties' tuple generation run while the HE segments before it are evaluated (client option
`prefetch`: started after the previous answer instead, with the BFV pads and masks: `ahead.py`):

    HE segment   client sends ct(x) (first segment) or ct(z) with z = x + r revealed by the 2PC; the server
                 subtracts the gather of r, evaluates, then either floods and returns the logits (last
                 segment) or masks every slot and returns ct(y + m) (HE -> shares, `convert.py`).
    ss segment   the client's share (x at the start, y + m after HE) and the server's (0, or -m) are input
                 by rank 1 and rank 0; the result is revealed to the client: in the clear at the end, or as
                 x + r (shares -> HE) before an HE segment.

Privacy: the input is never seen by the server in the clear: HE ciphertexts under the client's key, shares,
and masked openings only (with a local dealer, as in `ss`, the server operator can unmask the 2PC shares:
"cryptographic-server-dealer"). The client sees masked intermediates: a linear-only HE segment runs in BFV
and its hand-overs are masked uniformly mod t (perfect hiding, `convert/bfv.py`, `convert/ring.py`); a segment
with x² runs in CKKS with 19-20 bits of statistical hiding (`convert/__init__.py`); server option `hiding`:
"best" (default), "perfect" (refuse CKKS conversions) or "statistical" (CKKS everywhere, the old behaviour).
`privacy()["conversions"]` states the hiding of every conversion.
"""
from __future__ import annotations

from typing import Any

from ...errors import ParameterError, PrivinferError
from ...model.ir import Graph
from ...planner.plan import PlanError, parse_plan
from ..base import ClientSide, Protocol, ServerSide, register
from ..ss import MAX_PRECISION_BITS
from ..ss.dealer import check_dealer_choice
from ..ss.worker import warm_up
from .ahead import prefetch_flag
from .bfv_seg import BFVSegmentServer, is_linear
from .he_seg import HESegmentServer
from .privacy import _noisy_start, _reveals
from .sides import _HybridClient, _HybridServer  # noqa: F401  (_HybridClient re-exported: tests, benchmarks)


HIDING = ("best", "perfect", "statistical")


@register
class Hybrid(Protocol):
    name = "hybrid"
    summary = "a plan splits the layers between CKKS HE and 2PC (CrypTen), with masked conversions (GAZELLE-style)"
    inner_links = ("gloo: client rank <-> server rank (ss segments)", "gloo: dealer <-> ranks (ss segments)")
    server_options: dict[str, Any] = {"plan": None, "dealer": None, "server_secret": None, "mpc_timeout": 60.0,
                                      "threads": 1, "gloo_ifname": None, "max_batch": 16,
                                      # the `he` circuit-privacy policy of the segment that returns logits
                                      "circuit_privacy": "flood", "flood_std": None, "max_queries": None,
                                      # a noisy segment: the public data set the recommended clip norm comes from
                                      "dataset": "digits",
                                      # conversions: BFV (perfect) for linear HE segments, CKKS elsewhere ("best");
                                      # refuse CKKS conversions ("perfect"); CKKS everywhere ("statistical")
                                      "hiding": "best"}
    client_options: dict[str, Any] = {"precision_bits": 16, "threads": 1, "gloo_ifname": None, "client_secret": None,
                                      # a noisy segment's DP release (as the `noisy` protocol's options)
                                      "epsilon": None, "mechanism": "laplace", "delta": None, "clip": None,
                                      "nullify": 0.0, "budget": None,
                                      # make the next query's single-use material after each answer (`ahead.py`)
                                      "prefetch": False}
    local_client_options = frozenset({"client_secret"})
    local_session_defaults = {"dealer": "local"}

    @classmethod
    def check_graph(cls, graph: Graph) -> None:
        """Every layer kind is valid for some plan; the plan itself is checked in __init__."""

    def __init__(self, graph: Graph, **options):
        super().__init__(graph, **options)
        if self.options["plan"] is None:
            raise PlanError("protocol 'hybrid' needs a plan, e.g. plan='he:0-3,ss:4-' (--plan on the CLI)")
        self.segments = parse_plan(self.options["plan"], graph)
        self.has_ss = any(s.protocol == "ss" for s in self.segments)
        self.secret = check_dealer_choice(self.options["dealer"], self.options["server_secret"]) if self.has_ss else None
        if float(self.options["mpc_timeout"]) <= 0:
            raise PrivinferError("mpc_timeout must be positive")
        he_opts = {k: self.options[k] for k in ("circuit_privacy", "flood_std", "max_queries")}
        hiding = self.options["hiding"]
        if hiding not in HIDING:
            raise ParameterError(f"hiding must be one of {HIDING}, got {hiding!r}")
        multi = len(self.segments) > 1
        self.he = {}
        for i, s in enumerate(self.segments):
            if s.protocol != "he":
                continue
            # an HE segment whose result reaches the client in the clear takes the output policy (flood)
            reveals = _reveals(self.segments, i)
            if is_linear(graph, s.start, s.stop) and hiding != "statistical":
                try:
                    self.he[i] = BFVSegmentServer(graph, s.start, s.stop, reveals)  # perfect hand-overs
                    continue
                except ParameterError:
                    if hiding == "perfect":
                        raise
            if hiding == "perfect" and multi:
                kinds = sorted({graph.layers[k].kind for k in range(s.start, s.stop)})
                raise PlanError(f"HE segment {s} holds {kinds}: only linear segments (conv2d, linear, avgpool2d, "
                                "flatten) run in BFV with perfectly hiding conversions; CKKS conversions hide 19-20 "
                                "bits (hiding='best' allows them)")
            self.he[i] = HESegmentServer(graph, s.start, s.stop, reveals, he_opts)
        k = _noisy_start(self.segments)
        self.noisy_clips = None
        if k is not None:
            from ..noisy.train import public_clips
            self.noisy_clips = public_clips(graph, k, self.options["dataset"]) if self.options["dataset"] else {}
        if self.has_ss:
            warm_up()  # the CrypTen fork server loads while the HE segments are prepared

    def server_side(self, client_options: dict) -> ServerSide:
        return _HybridServer(self, client_options)

    @classmethod
    def validate_client_options(cls, options: dict) -> dict:
        opts = super().validate_client_options(options)
        bits = opts["precision_bits"]
        if not isinstance(bits, int) or not 1 <= bits <= MAX_PRECISION_BITS:
            raise ParameterError(f"precision_bits must be an integer in 1..{MAX_PRECISION_BITS}, got {bits!r}")
        opts["prefetch"] = prefetch_flag(opts["prefetch"])
        from ..noisy import Noisy
        Noisy.validate_client_options({k: opts[k] for k in Noisy.client_options})  # a noisy segment's options
        return opts

    @classmethod
    def client_side(cls, welcome: dict, graph: Graph, **client_options) -> ClientSide:
        warm_up()
        return _HybridClient(welcome, graph, cls.validate_client_options(client_options))
