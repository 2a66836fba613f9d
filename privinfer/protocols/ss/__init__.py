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

import json
import math
import time
from typing import Any

import numpy as np

from ...errors import ParameterError, PrivinferError, ProtocolError, ShapeError, TimeoutError_
from ...model.ir import Graph, graph_to_bytes
from ...model.bounds import check_fixed_point
from ...transport import Channel, frames
from ...transport.ports import free_port, peer_pending
from ..base import ClientSide, Protocol, ServerSide, register
from ..engine import EngineClient, EngineServer
from .steps import SSSegment, SSShare
from .lowering import SUPPORTED, lower
from .tuples import plan_digest, plan_elements, validate_plan
from .auth import client_authenticate, key_id, load_secret
from .dealer import LocalDealer, RemoteDealer, check_dealer_choice, relay_client_handshake
from .worker import ChildProcess, ifname_for, party_main, warm_up

THREAT_MODEL = "semi-honest server and client, non-colluding dealer (CrypTen TTP)"
SPAWN_ALLOWANCE = 120.0  # seconds a fresh worker may take to import torch + CrypTen on a busy machine
MAX_PRECISION_BITS = 20
WRAP_MARGIN_BITS = 10  # at most 2^-10 probability per image that some truncation wraps
MEAN_ABS_Y = 2.0       # assumed mean |activation| (measured on the zoo: 0.84 minionn-mnist, 1.1 minionn-cifar)
TRUNCATING = ("conv2d", "linear", "relu", "poly", "avgpool2d")
"""Why `precision_bits` f is capped, and where the cap comes from.

Ring Z_2^64, signed. After a product, a value y sits at scale 2^(2f) until CrypTen's two-party
truncation, which divides each party's share locally (`ArithmeticSharedTensor.div_` with world size 2).
The shares are s0 = r (uniform) and s1 = y·2^(2f) - r; local division is exact up to ±1 unless
s0 + s1 wraps around 2^64, which happens with probability |y|·2^(2f) / 2^64 per element; the element
is then off by about 2^(64-f): a garbage logit, not a rounding error (and a client that sees how often
it happens learns about |y|). Per image the wrap probability is at most Σ|y|·2^(2f-64) over the
truncated elements (outputs of the TRUNCATING layers). Measured (Σ|y| per image; wrap bound at f=16/20):
    deepsecure-mnist  2.0e3   4.7e-7 / 1.2e-4
    minionn-mnist     1.1e4   2.6e-6 / 6.5e-4      (f=24: 0.17; f=30: certain; per element at f=30
    minionn-cifar     4.1e5   9.5e-5 / 2.4e-2       with |y|=4: 0.25)
So one constant cannot serve every network. `max_precision_bits(graph)` asks for at most 2^-WRAP_MARGIN_BITS
per image with Σ|y| <= MEAN_ABS_Y · N, N the number of truncated elements, which the public architecture
fixes: 2f <= 64 - WRAP_MARGIN_BITS - log2(MEAN_ABS_Y · N), and never above MAX_PRECISION_BITS = 20.
That gives 20 for deepsecure-mnist, 19 for minionn-mnist, 17 for minionn-cifar; the default 16 fits all.
"""


def max_precision_bits(graph: Graph) -> int:
    """The largest `precision_bits` this architecture allows (see TRUNCATING); public, weight-free."""
    g = graph.replace(lower(graph))
    n = sum(int(np.prod(shape)) for layer, shape in zip(g.layers, g.shapes[1:]) if layer.kind in TRUNCATING)
    bits = (64 - WRAP_MARGIN_BITS - math.log2(MEAN_ABS_Y * max(n, 1))) // 2
    return int(max(1, min(MAX_PRECISION_BITS, bits)))


def check_precision(graph: Graph, bits: int) -> None:
    cap = max_precision_bits(graph)
    if bits > cap:
        raise ParameterError(
            f"precision_bits={bits} is above {cap}, the cap for this network: CrypTen's two-party truncation "
            f"wraps around the 64-bit ring with probability |y|*2^(2f-64) per value, and this network "
            f"truncates enough values per image that f>{cap} makes a garbage result likelier than 2^-{WRAP_MARGIN_BITS}")


class DealerError(ProtocolError):
    """The dealer died, stalled or refused while preparing correlated randomness."""


def _chunks(batch: int, size: int) -> list[int]:
    return [size] * (batch // size) + ([batch % size] if batch % size else [])


def _rendezvous(host: str, port: int) -> str:
    return f"tcp://[{host}]:{port}" if ":" in host else f"tcp://{host}:{port}"


class _SSServer(EngineServer):
    def __init__(self, proto: "SecretSharing", copts: dict):
        self.graph = proto.graph
        self.chain = [SSShare(False), SSSegment(self, False, 0, 0, len(self.graph.layers))]
        self.sopts, self.copts = proto.options, copts
        self.secret = proto.secret
        if copts.get("client_secret") is not None:
            raise ProtocolError("the client sent its dealer secret to the server; it must stay on the client")
        check_precision(self.graph, int(copts["precision_bits"]))
        self.timeout = float(self.sopts["mpc_timeout"])
        self.worker: ChildProcess | None = None
        self.dealer = None
        self.plans: dict[int, tuple[bytes, str, int]] = {}
        self.sent_plans: set[int] = set()
        self.prepared: int | None = None

    def _spawn(self, rank: int, rdv: str, opts: dict) -> ChildProcess:
        """Start this side's CrypTen party (a seam: `hybrid` runs its own party loop)."""
        return ChildProcess(party_main, (rank, rdv, graph_to_bytes(self.graph), opts), f"party{rank}")

    def _worker_opts(self) -> dict:
        return {"precision_bits": int(self.copts["precision_bits"]), "mpc_timeout": self.timeout,
                "threads": int(self.sopts["threads"]), "gloo_ifname": self.sopts["gloo_ifname"]}

    def welcome(self) -> dict:
        local = self.sopts["dealer"] == "local"
        return {"precision_bits": int(self.copts["precision_bits"]), "mpc_timeout": self.timeout,
                "dealer": "local" if local else "third-party " + str(self.sopts["dealer"])}

    def setup(self, ch: Channel) -> None:
        try:
            host = ch.sock.getsockname()[0]
            rdv = _rendezvous(host, free_port(host))
            opts = self._worker_opts()
            opts["gloo_ifname"] = opts["gloo_ifname"] or ifname_for(host)
            if self.sopts["dealer"] == "local":
                self.dealer = LocalDealer(rdv, opts)
                ch.send_json({"rendezvous": rdv, "dealer": "local"})
            else:
                self.dealer = RemoteDealer(self.sopts["dealer"], rdv, opts, self.timeout + SPAWN_ALLOWANCE,
                                           self.secret)
                ch.send_json({"rendezvous": rdv, "dealer": "third-party"})
                relay_client_handshake(ch, self.dealer)
                opts["prg_key"] = self.dealer.prg_key.hex()
            self.worker = self._spawn(0, rdv, opts)
            ready = self._wait_ready(ch) or ch.recv_json()
            if not ready.get("ready"):
                raise ProtocolError("client did not confirm the 2PC set-up")
            self._plan(1)  # the dry run for one image: input-independent, so part of the set-up
            ch.send_json({"ready": True})
            if self.copts["prefetch"]:
                self._offline(ch, 1)
        except BaseException:
            self.close()
            raise

    def _wait_ready(self, ch: Channel) -> dict | None:
        """Wait for the worker's CrypTen init; a local dealer that dies, or a client that hangs up or
        sends anything but its ready message, fails it at once (instead of holding a session slot and
        two processes until the gloo timeout). Returns the client's ready message if it came first."""
        deadline = time.monotonic() + self.timeout + SPAWN_ALLOWANCE
        early = None
        while True:
            pending = peer_pending(ch.sock)
            if pending is None:
                raise ProtocolError("the client closed the connection during the 2PC set-up")
            if pending and early is None:
                early = ch.recv_json()
                if early.get("ready") is not True:
                    raise ProtocolError("expected the client's ready message during the 2PC set-up")
            try:
                self.worker.recv(min(0.2, max(0.01, deadline - time.monotonic())), "set-up")
                return early
            except TimeoutError_:
                if time.monotonic() >= deadline:
                    raise TimeoutError_("2PC set-up (CrypTen init with client and dealer) timed out after "
                                        f"{self.timeout + SPAWN_ALLOWANCE:.0f} s") from None
                if isinstance(self.dealer, LocalDealer) and not self.dealer.child.alive():
                    raise ProtocolError(f"the dealer process died during set-up (exit code "
                                        f"{self.dealer.child.proc.exitcode})") from None

    # --- phases -----------------------------------------------------------------------------------
    def _plan(self, batch: int) -> tuple[bytes, str, int]:
        if batch not in self.plans:
            _, payloads = self.worker.call({"cmd": "plan", "batch": batch}, timeout=self.timeout + SPAWN_ALLOWANCE)
            plan = validate_plan(json.loads(payloads[0].decode()))
            self.plans[batch] = (payloads[0], plan_digest(plan), plan_elements(plan))
        return self.plans[batch]

    def _offline(self, ch: Channel, batch: int) -> None:
        t0 = time.perf_counter()
        blob, digest, elements = self._plan(batch)
        t_plan = time.perf_counter() - t0
        include = batch not in self.sent_plans
        ch.send_json({"offline": batch, "digest": digest, "plan_follows": include})
        if include:
            ch.send_bytes(blob)
            self.sent_plans.add(batch)
        d_sent, d_recv, d_msgs = self.dealer.bytes_sent, self.dealer.bytes_received, self.dealer.messages
        self.worker.send({"cmd": "generate"}, blob)
        t1 = time.perf_counter()
        try:
            self.dealer.start(blob)
            dealer_blob = self.dealer.finish(self.timeout)
        except PrivinferError as e:
            self.worker.recv(self.timeout, "generate")  # keep the pipe in step
            raise DealerError(f"the dealer failed during the offline phase: {e}") from None
        t_dealer = time.perf_counter() - t1
        gen, _ = self.worker.recv(self.timeout, "generate")
        self.worker.call({"cmd": "fill"}, dealer_blob, timeout=self.timeout)
        ch.send_json({"offline_done": batch, "server": {
            "plan_s": t_plan, "dealer_s": t_dealer, "generate_s": gen["s"], "tuples": gen["tuples"],
            "ring_elements": elements,
            "bytes_server_to_dealer": self.dealer.bytes_sent - d_sent,
            "bytes_dealer_to_server": self.dealer.bytes_received - d_recv,
            "dealer_messages": self.dealer.messages - d_msgs, "dealer": self.dealer.where}})
        self.prepared = batch

    def _online(self, ch: Channel, batch: int) -> None:
        d_msgs = self.dealer.messages
        msg, _ = self.worker.call({"cmd": "online", "batch": batch}, timeout=self.timeout + 30.0)
        ch.send_json({"online_done": batch, "server": {"s": msg["s"], "cpu_s": msg["cpu_s"], "comm": msg["comm"],
                                                        "dealer_messages": self.dealer.messages - d_msgs,
                                                        "dealer_requests": msg["dealer_requests"]}})
        self.prepared = None

    def run_segment(self, ch: Channel, k: int, batch: int, own, mask) -> None:
        """The whole graph from the client's input (the server's share is zero: `own` is None), revealed to
        the client, in chunks of `max_chunk` images, each with its offline phase before it."""
        if k != 0 or own is not None or mask is not None:
            raise ProtocolError("the ss session runs one segment from the client's input")
        for n in _chunks(batch, int(self.copts["max_chunk"])):
            if self.prepared != n:
                self._offline(ch, n)
            self._online(ch, n)
            if self.copts["prefetch"]:
                try:
                    self._offline(ch, n)
                except DealerError as e:  # this query's result stands; the next query retries
                    ch.send_json({"offline_error": str(e)})
                    self.prepared = None

    def close(self) -> None:
        for p in (self.worker, self.dealer):
            if p is not None:
                try:
                    p.close()
                except Exception:
                    pass
        self.worker = self.dealer = None


class _SSClient(EngineClient):
    def __init__(self, welcome: dict, graph: Graph, copts: dict):
        self.graph = graph
        self.chain = [SSShare(True), SSSegment(self, True, 0, 0, len(graph.layers))]
        self.copts = copts
        self.info = welcome
        check_precision(graph, int(copts["precision_bits"]))  # before connecting any CrypTen process
        self.secret = load_secret(copts["client_secret"]) if copts.get("client_secret") is not None else None
        self.dealer_verified = False  # True once this client authenticated a third-party dealer
        self.setup_timing: dict = {}
        self.timeout = float(welcome.get("mpc_timeout", 60.0))
        self.worker: ChildProcess | None = None
        self.plans: dict[int, bytes] = {}
        self.prepared: tuple[int, dict] | None = None
        self.last: dict = {}

    def setup(self, ch: Channel) -> None:
        try:
            msg = ch.recv_json()
            rdv = msg.get("rendezvous")
            if not isinstance(rdv, str) or not rdv.startswith("tcp://"):
                raise ProtocolError(f"server sent no usable rendezvous address ({rdv!r})")
            key = client_authenticate(ch, msg.get("dealer"), rdv, self.secret, self.setup_timing)
            self.dealer_verified = key is not None
            opts = {"precision_bits": int(self.copts["precision_bits"]), "mpc_timeout": self.timeout,
                    "threads": int(self.copts["threads"]),
                    "gloo_ifname": self.copts["gloo_ifname"] or ifname_for(ch.sock.getsockname()[0])}
            if key is not None:
                opts["prg_key"] = key.hex()
            self.worker = self._spawn(1, rdv, opts)
            self.worker.recv(self.timeout + SPAWN_ALLOWANCE, "set-up (CrypTen init with server and dealer)")
            ch.send_json({"ready": True})
            if not ch.recv_json().get("ready"):
                raise ProtocolError("server did not confirm the 2PC set-up")
            if self.copts["prefetch"]:
                self.prepared = (1, self._offline(ch, 1))
        except BaseException:
            self.close()
            raise

    _spawn = _SSServer._spawn

    def _offline(self, ch: Channel, batch: int) -> dict:
        t0 = time.perf_counter()
        msg = ch.recv_json()
        if msg.get("offline") != batch:
            raise ProtocolError(f"expected the offline phase for batch {batch}, server sent {str(msg)[:200]}")
        if msg.get("plan_follows"):
            blob = ch.recv_bytes()
            plan = validate_plan(json.loads(blob.decode()))
            if plan_digest(plan) != msg.get("digest"):
                raise ProtocolError("preprocessing plan does not match its digest")
            self.plans[batch] = blob
        if batch not in self.plans:
            raise ProtocolError(f"server referred to a preprocessing plan for batch {batch} it never sent")
        gen, _ = self.worker.call({"cmd": "generate"}, self.plans[batch], timeout=self.timeout)
        done = ch.recv_json()
        if "offline_error" in done:
            raise DealerError(str(done["offline_error"]))
        if done.get("offline_done") != batch:
            raise ProtocolError(f"expected offline_done, server sent {str(done)[:200]}")
        return {"offline_s": time.perf_counter() - t0, "client_generate_s": gen["s"], **done["server"]}

    def _online(self, ch: Channel, x: np.ndarray) -> tuple[np.ndarray, dict]:
        t0 = time.perf_counter()
        msg, payloads = self.worker.call({"cmd": "online", "batch": int(x.shape[0])},
                                         frames.encode_tensor(np.ascontiguousarray(x, dtype=np.float64)),
                                         timeout=self.timeout + 30.0)
        online_s = time.perf_counter() - t0
        y = frames.decode_tensor(payloads[0])
        done = ch.recv_json()
        if done.get("online_done") != int(x.shape[0]):
            raise ProtocolError(f"expected online_done, server sent {str(done)[:200]}")
        return y, {"online_s": online_s, "client_comm": msg["comm"], "client_cpu_s": msg["cpu_s"],
                   "server": done["server"]}

    def run_segment(self, ch: Channel, k: int, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """The whole graph on this client's input (its share; the server's is zero), revealed to it."""
        outs, acc = [], _Acc()
        pos = 0
        for n in _chunks(int(x.shape[0]), int(self.copts["max_chunk"])):
            if self.prepared is not None and self.prepared[0] == n:
                off = self.prepared[1]
            else:
                off = self._offline(ch, n)
            self.prepared = None
            y, on = self._online(ch, x[pos:pos + n])
            pos += n
            outs.append(y)
            acc.add(off, on)
            if self.copts["prefetch"]:
                try:
                    self.prepared = (n, self._offline(ch, n))
                except DealerError:
                    self.prepared = None  # the server retries (and reports) at the next query
        out = np.concatenate(outs, axis=0)
        if out.shape != (x.shape[0], *self.graph.output_shape):
            raise ShapeError(f"2PC output shape {out.shape} != {(x.shape[0], *self.graph.output_shape)}")
        self.last = acc.result()
        return out, self.last

    def privacy(self) -> dict:
        if self.dealer_verified:
            guarantee = "cryptographic-trusted-dealer"
            dealer = (f"third-party (the server names it {str(self.info.get('dealer', '?'))[12:80]}), authenticated by "
                      f"this client (pre-shared secret, key id {key_id(self.secret)}); PRG keys derived in the handshake")
            statement = "input and weights private unless the dealer colludes with the other party"
        else:
            guarantee = "cryptographic-server-dealer"
            dealer = "local: spawned by the server, which holds both parties' PRG keys"
            statement = "no input privacy against the server operator"
        return {"guarantee": guarantee, "statement": statement, "dealer": dealer,
                "threat_model": THREAT_MODEL, "fixed_point_bits": int(self.copts["precision_bits"]),
                "ring_bits": 64, "input_private": self.dealer_verified, "model_private": True, "output_to": "client only",
                "public": "architecture (layer kinds, shapes), batch size, timing",
                "dealer_prg": "SHAKE-128, 256-bit keys per party, " + (
                    "derived by HMAC-SHA-256 from the handshake (never sent)" if self.dealer_verified
                    else "sent by the dealer over the gloo link"),
                "transport": "gloo over plain TCP: use a trusted network or a TLS/VPN tunnel"}

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None


class _Acc:
    """Sums per-chunk figures into one query record."""

    def __init__(self):
        self.v = {"offline_s": 0.0, "online_s": 0.0, "online_bytes_client_to_server": 0,
                  "online_bytes_server_to_client": 0, "online_rounds": 0, "online_dealer_messages": 0,
                  "offline_bytes_server_to_dealer": 0, "offline_bytes_dealer_to_server": 0,
                  "offline_dealer_messages": 0, "offline_dealer_s": 0.0, "offline_plan_s": 0.0,
                  "offline_server_generate_s": 0.0, "offline_client_generate_s": 0.0,
                  "tuples": 0, "ring_elements": 0, "chunks": 0}

    def add(self, off: dict, on: dict) -> None:
        v = self.v
        v["chunks"] += 1
        v["offline_s"] += off["offline_s"]
        v["online_s"] += on["online_s"]
        v["online_bytes_client_to_server"] += on["client_comm"]["bytes_sent"]
        v["online_bytes_server_to_client"] += on["client_comm"]["bytes_received"]
        v["online_rounds"] += on["client_comm"]["rounds"]
        v["online_dealer_messages"] += on["server"]["dealer_messages"] + on["server"]["dealer_requests"]
        v["offline_bytes_server_to_dealer"] += off["bytes_server_to_dealer"]
        v["offline_bytes_dealer_to_server"] += off["bytes_dealer_to_server"]
        v["offline_dealer_messages"] += off["dealer_messages"]
        v["offline_dealer_s"] += off["dealer_s"]
        v["offline_plan_s"] += off["plan_s"]
        v["offline_server_generate_s"] += off["generate_s"]
        v["offline_client_generate_s"] += off["client_generate_s"]
        v["tuples"] += off["tuples"]
        v["ring_elements"] += off["ring_elements"]
        v["server_online_comm"] = on["server"]["comm"]
        v["online_cpu_s_client"] = v.get("online_cpu_s_client", 0.0) + on["client_cpu_s"]
        v["online_cpu_s_server"] = v.get("online_cpu_s_server", 0.0) + on["server"]["cpu_s"]

    def result(self) -> dict:
        v = dict(self.v)
        # traffic outside the privinfer channel, for the session's per-query totals
        v["side_bytes_client_to_server"] = v["online_bytes_client_to_server"]
        v["side_bytes_server_to_client"] = v["online_bytes_server_to_client"]
        v["side_rounds"] = v["online_rounds"]
        v["dealer_bytes"] = v["offline_bytes_server_to_dealer"] + v["offline_bytes_dealer_to_server"]
        return v


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

