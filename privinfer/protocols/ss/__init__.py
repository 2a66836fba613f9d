"""`ss`: two-party secret-shared inference (MiniONN / DeepSecure setting) on CrypTen, with a dealer.

Parties and processes
    * server = model owner = CrypTen rank 0, client = input owner = rank 1, dealer = CrypTen's trusted
      third party (TTP), rank 2. Each rank is its own OS process (torch.distributed: one process group
      per process); the server spawns one rank-0 worker per client connection, the client one rank-1
      worker per session, and the dealer is either spawned per session by the server (`dealer="local"`)
      or a `privinfer dealer` service on a third host (`dealer="host:port"`). The server must say which:
      there is no default. They meet over TCP (gloo); the rendezvous address travels on privinfer's own
      channel, so the client needs only the server's address (and, for a third-party dealer, the secret
      the dealer's operator gave it).

Who learns what
    The architecture (layer kinds and shapes) is public: the client works on a zero-weight copy built
    from the spec. The server shares the weights (src=0), the client shares the input (src=1), and only
    the client gets the logits (`get_plain_text(dst=1)`). The server sees only uniformly random shares
    and masked openings; so does the client about the weights. Besides the architecture, both learn the
    batch size and timing.

Threat model
    Semi-honest (honest-but-curious) server and client, and a dealer that colludes with neither. A dealer
    that shares its keys with the server reveals the client's input to it (and vice versa for the
    weights), so what the client gets depends on whose dealer it is:
    * `dealer="local"`: the server spawns the dealer, which hands out both PRG keys: no input privacy
      against the server's operator (guarantee "cryptographic-server-dealer").
    * third-party dealer: each party authenticates it with its own pre-shared secret and derives its
      PRG key from that handshake (`ss.auth`); a mismatch is a `DealerAuthError` before any share moves,
      and a server that points the client at a dealer of its own is detected the same way (guarantee
      "cryptographic-trusted-dealer", only when the client verified the dealer). The gloo
    links are plain TCP: run them on a trusted network or inside TLS/VPN tunnels. Hardening over stock
    CrypTen: the dealer<->party randomness comes from SHAKE-128 keyed with 256-bit keys instead of torch's
    Mersenne Twister (whose state a party can recover from Beaver openings of values it knows, e.g. its
    own weights, and with it the other party's masks).

Offline / online
    Before the input exists, the server worker dry-runs the network on shapes alone (no data leaves the
    process) and records every request for correlated randomness, in order: Beaver triples for each
    product, binary triples for every AND of the comparison circuits, B2A bits. The plan goes to the
    dealer, which answers party 0's share of everything in one batch; party 1 derives its shares locally
    from its dealer key. The online phase then pops tuples in order; a tuple that was not preprocessed is
    an error, never a dealer round trip, so online traffic is client<->server only.

Arithmetic
    64-bit ring, fixed point with `precision_bits` fractional bits (default 16; truncation is CrypTen's
    local two-party truncation). Layers: conv2d (asymmetric padding padded explicitly), linear, average
    pool, max pool (tournament of pairwise maxima), ReLU, polynomials, flatten. ReLU→MaxPool runs as
    MaxPool→ReLU (they commute exactly), which divides the ReLU count by the pool area.
"""
from __future__ import annotations

from typing import Any

from ...errors import ParameterError, PrivinferError
from ...model.ir import Graph
from ...model.bounds import check_fixed_point
from ..base import ClientSide, Protocol, ServerSide, register
from .lowering import SUPPORTED
from .dealer import check_dealer_choice
from .worker import warm_up
from .precision import MAX_PRECISION_BITS, check_precision, max_precision_bits
from .sides import THREAT_MODEL, DealerError, _SSClient, _SSServer

__all__ = ["SecretSharing", "DealerError", "THREAT_MODEL", "MAX_PRECISION_BITS", "check_precision",
           "max_precision_bits"]


@register
class SecretSharing(Protocol):
    name = "ss"
    summary = "2PC (CrypTen, arithmetic + binary sharing) with a dealer; offline triples, online client<->server only"
    inner_links = ("gloo: client rank <-> server rank", "gloo: dealer <-> ranks")
    server_options: dict[str, Any] = {"dealer": None, "server_secret": None, "mpc_timeout": 60.0, "threads": 1,
                                      "gloo_ifname": None}
    client_options: dict[str, Any] = {"precision_bits": 16, "max_chunk": 16, "prefetch": False,
                                      "threads": 1, "gloo_ifname": None, "client_secret": None}
    local_client_options = frozenset({"client_secret"})  # never sent to the server
    #: PrivateSession on one machine: the server spawns the dealer (labelled "cryptographic-server-dealer")
    local_session_defaults = {"dealer": "local"}
    supported_kinds = SUPPORTED

    def __init__(self, graph: Graph, **options):
        super().__init__(graph, **options)
        self.secret = check_dealer_choice(self.options["dealer"], self.options["server_secret"])
        if float(self.options["mpc_timeout"]) <= 0:
            raise PrivinferError("mpc_timeout must be positive")
        check_fixed_point(graph, self.client_options["precision_bits"], 64, "ss")  # refuse at serve time
        warm_up()  # the fork server (torch + CrypTen preloaded) starts while the server finishes setting up

    @classmethod
    def validate_client_options(cls, options: dict) -> dict:
        opts = super().validate_client_options(options)
        bits = opts["precision_bits"]
        if not isinstance(bits, int) or not 1 <= bits <= MAX_PRECISION_BITS:
            raise ParameterError(
                f"precision_bits must be an integer in 1..{MAX_PRECISION_BITS}, got {bits!r}: CrypTen's two-party "
                f"truncation wraps around the 64-bit ring with probability |y|*2^(2f-64) per element, which "
                f"above f={MAX_PRECISION_BITS} is no longer negligible (e.g. 0.25 per element at f=30)")
        if not isinstance(opts["max_chunk"], int) or not 1 <= opts["max_chunk"] <= 4096:
            raise PrivinferError(f"max_chunk must be an integer in 1..4096, got {opts['max_chunk']!r}")
        if not isinstance(opts["threads"], int) or not 1 <= opts["threads"] <= 256:
            raise PrivinferError(f"threads must be an integer in 1..256, got {opts['threads']!r}")
        opts["prefetch"] = bool(opts["prefetch"])
        if not isinstance(opts["client_secret"], (type(None), str, bytes)):
            raise PrivinferError("client_secret must be the path of the dealer secret file (or bytes)")
        return opts

    def server_side(self, client_options: dict) -> ServerSide:
        # the ring must hold every product for inputs in the published range (the client picks the precision)
        check_fixed_point(self.graph, int(client_options["precision_bits"]), 64, "ss")
        return _SSServer(self, client_options)

    @classmethod
    def client_side(cls, welcome: dict, graph: Graph, **client_options) -> ClientSide:
        warm_up()
        return _SSClient(welcome, graph, cls.validate_client_options(client_options))

