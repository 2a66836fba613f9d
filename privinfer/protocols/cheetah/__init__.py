"""`cheetah`: two-party inference without a dealer, on SecretFlow SPU's CHEETAH protocol.

Why: `ss` needs a third party (CrypTen's dealer) that must collude with neither side. MiniONN, GAZELLE and
Cheetah need only the client and the server: they make their correlated randomness themselves (HE for the
linear layers, silent OT for the non-linear ones). SPU (`spu==0.9.5`, maintained C++) implements CHEETAH;
privinfer keeps its session, server, CLI, limits and errors, lowers its IR to JAX (`lower`) and runs SPU's
two parties as processes next to the server and the client (`party`, `spawn`).

Parties and links
    server = model owner = SPU rank 0, client = input owner = rank 1. Each side starts ONE party process per
    session, under the SPU venv's interpreter. The parties talk over SPU's brpc link: each side picks a free
    port on the interface the privinfer session already uses and sends `host:port` on the channel; the server
    accepts only the client's own IP, the client only the server's. Nobody else takes part.

Who learns what
    Colocated mode: the server's party holds the weights as a private value, the client's the input; CHEETAH
    multiplies them with HE (the weights never leave the server, the input never leaves the client in the
    clear) and computes ReLU/max/truncation with silent-OT based protocols. The result stays secret-shared;
    the server's party gives its output share to the server, which forwards it: only the client learns the
    logits. Public: the architecture, batch size, timing, and (as in `ss`) fixed-point precision.

Engine
    A query is `ss`'s plan: share (the client's input is its share, no traffic), then one `SSSegment` over the
    whole graph whose runner is this session's SPU party, revealed to the client (`protocols/engine.py`).

Threat model
    Semi-honest client and server; no third party. The brpc link is plain TCP: use a trusted network or a
    tunnel. Costs: a one-time set-up (base OTs, silent-OT seeds, HE keys) in the first run, then per query.
"""
from __future__ import annotations

import io
import socket
import time
from typing import Any

import numpy as np

from ...errors import PrivinferError, ProtocolError, ShapeError, TimeoutError_
from ...model.ir import Graph
from ...transport import Channel
from ...transport.ports import free_port, host_port, parse_host_port, peer_pending, plain_ip
from ..base import ClientSide, Protocol, ServerSide, register
from ..engine import EngineClient, EngineServer
from ..ss.steps import SSSegment, SSShare
from .spawn import SPU_VERSION, PartyProcess

THREAT_MODEL = "semi-honest server and client; only these two parties take part (no dealer)"
SPAWN_ALLOWANCE = 120.0  # seconds a party may take to import jax + spu and do CHEETAH's set-up under load
MAX_SHARE_BLOBS = 64


def _hosts(sock: socket.socket) -> tuple[str, str]:
    """(our IP, the peer's IP) on the session socket; loopback for an in-process socket pair."""
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        return plain_ip(sock.getsockname()[0]), plain_ip(sock.getpeername()[0])
    return "127.0.0.1", "127.0.0.1"


def _peer_link(msg: dict, expect_host: str, who: str) -> str:
    hp = parse_host_port(msg.get("spu_link"))
    if hp is None:
        raise ProtocolError(f"{who} sent no usable SPU link address ({str(msg.get('spu_link'))[:80]!r})")
    if plain_ip(hp[0]) != expect_host:
        raise ProtocolError(f"{who} asked for an SPU link on {hp[0]}, not on its own address {expect_host}")
    return host_port(*hp)


def _wait(party: PartyProcess, ch: Channel, timeout: float, what: str, peer: str):
    """The party's answer; fails at once if the peer hangs up on the channel meanwhile (its party is gone
    too, and ours would otherwise wait on the link until its receive timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        if peer_pending(ch.sock) is None:
            raise ProtocolError(f"the {peer} closed the connection during the SPU {what}")
        try:
            return party.recv(min(0.5, max(0.01, deadline - time.monotonic())), what)
        except TimeoutError_:
            if time.monotonic() >= deadline:
                raise TimeoutError_(f"SPU {what} timed out after {timeout:.0f} s") from None


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


class _Server(EngineServer):
    def __init__(self, proto: "Cheetah"):
        self.chain = [SSShare(False), SSSegment(self, False, 0, 0, len(proto.graph.layers))]
        self.graph = proto.graph
        self.opts = proto.options
        self.timeout = float(self.opts["mpc_timeout"])
        self.party: PartyProcess | None = None

    def welcome(self) -> dict:
        return {"mpc_timeout": self.timeout, "fxp_bits": int(self.opts["fxp_bits"]), "spu": SPU_VERSION}

    def setup(self, ch: Channel) -> None:
        try:
            me, peer = _hosts(ch.sock)
            mine = host_port(me, free_port(me))
            ch.send_json({"spu_link": mine})
            theirs = _peer_link(ch.recv_json(), peer, "client")
            self.party = PartyProcess("server party")
            self.party.send({"cmd": "init", "rank": 0, "addrs": [mine, theirs], "spec": self.graph.spec(),
                             "fxp_bits": int(self.opts["fxp_bits"]), "timeout_s": self.timeout},
                            _npz(**self.graph.arrays()))
            init = _wait(self.party, ch, self.timeout + SPAWN_ALLOWANCE, "set-up", "client")[0]
            ready = ch.recv_json()
            if ready.get("ready") is not True:
                raise ProtocolError("client did not confirm the SPU set-up")
            ch.send_json({"ready": True, "server": init})
        except BaseException:
            self.close()
            raise

    def run_segment(self, ch: Channel, k: int, batch: int, own, mask) -> None:
        """The whole graph under CHEETAH from the client's input (the server's share is zero), to the client."""
        if k != 0 or own is not None or mask is not None:
            raise ProtocolError("a cheetah session runs one segment from the client's input")
        try:
            self.party.send({"cmd": "run", "batch": int(batch)})
            out, blobs = _wait(self.party, ch, self.timeout + SPAWN_ALLOWANCE, "run", "client")
        except BaseException:
            self.close()  # the link is out of step now: the session ends
            raise
        ch.send_json({"server": {"s": out["s"], "compile_s": out["compile_s"], "comm": out["comm"]}})
        ch.send_blobs(blobs)

    def close(self) -> None:
        if self.party is not None:
            self.party.close()
            self.party = None


class _Client(EngineClient):
    def __init__(self, welcome: dict, graph: Graph, copts: dict):
        self.chain = [SSShare(True), SSSegment(self, True, 0, 0, len(graph.layers))]
        self.graph = graph
        self.info = welcome
        self.timeout = float(welcome.get("mpc_timeout", 60.0))
        self.fxp_bits = welcome.get("fxp_bits", 20)
        if not isinstance(self.fxp_bits, int) or not 8 <= self.fxp_bits <= 30:
            raise ProtocolError(f"server sent fxp_bits {str(self.fxp_bits)[:40]!r}; expected an integer in 8..30")
        self.party: PartyProcess | None = None
        self.setup_side: dict = {}

    def setup(self, ch: Channel) -> None:
        try:
            me, peer = _hosts(ch.sock)
            theirs = _peer_link(ch.recv_json(), peer, "server")
            mine = host_port(me, free_port(me))
            ch.send_json({"spu_link": mine})
            self.party = PartyProcess("client party")
            self.party.send({"cmd": "init", "rank": 1, "addrs": [theirs, mine], "spec": self.graph.spec(),
                             "fxp_bits": self.fxp_bits, "timeout_s": self.timeout})
            init = _wait(self.party, ch, self.timeout + SPAWN_ALLOWANCE, "set-up", "server")[0]
            ch.send_json({"ready": True})
            done = ch.recv_json()
            if done.get("ready") is not True:
                raise ProtocolError("server did not confirm the SPU set-up")
            c = init["comm"]
            self.setup_side = {"side_bytes_client_to_server": int(c["bytes_sent"]),
                               "side_bytes_server_to_client": int(c["bytes_received"]),
                               "link_messages": int(c["messages_sent"]) + int(c["messages_received"]),
                               "setup_s_client_party": float(init["s"])}
        except BaseException:
            self.close()
            raise

    def run_segment(self, ch: Channel, k: int, x: np.ndarray) -> tuple[np.ndarray, dict]:
        """The whole graph under CHEETAH on this client's input, revealed to it; (logits, query timing)."""
        t0 = time.perf_counter()
        batch = int(x.shape[0])
        self.party.send({"cmd": "run", "batch": batch}, _npz(x=np.ascontiguousarray(x, dtype=np.float64)))
        mine = _wait(self.party, ch, self.timeout + SPAWN_ALLOWANCE, "run", "server")[0]
        srv = ch.recv_json().get("server")
        blobs = ch.recv_blobs()
        if not isinstance(srv, dict) or not 2 <= len(blobs) <= MAX_SHARE_BLOBS:
            raise ProtocolError("server sent no usable output share")
        _, payloads = self.party.call({"cmd": "reveal"}, *blobs, timeout=self.timeout)
        with np.load(io.BytesIO(payloads[0]), allow_pickle=False) as z:
            y = np.asarray(z["y"], dtype=np.float64)
        if y.shape != (batch, *self.graph.output_shape):
            raise ShapeError(f"CHEETAH output shape {y.shape} != {(batch, *self.graph.output_shape)}")
        c = mine["comm"]
        return y, {
            "offline_s": 0.0, "online_s": time.perf_counter() - t0, "compile_s": float(mine["compile_s"]),
            "side_bytes_client_to_server": int(c["bytes_sent"]),
            "side_bytes_server_to_client": int(c["bytes_received"]),
            # SPU counts messages, not rounds: the client's messages bound its rounds from above
            "side_rounds": int(c["messages_sent"]),
            "link_messages": int(c["messages_sent"]) + int(c["messages_received"]),
            "dealer_bytes": 0}

    def privacy(self) -> dict:
        return {"guarantee": "cryptographic", "threat_model": THREAT_MODEL, "dealer": "none",
                "backend": f"SecretFlow SPU {SPU_VERSION}, protocol CHEETAH (lattice HE for products, "
                           "silent OT (Ferret) for ReLU/max/truncation), colocated mode",
                "ring_bits": 64, "fixed_point_bits": self.fxp_bits,
                "security": "SPU 0.9.5's CHEETAH defaults (RLWE ciphertexts via SEAL, N=8192 for products; "
                            "Ferret silent OT); the CHEETAH paper targets 128-bit computational and 40-bit "
                            "statistical security (not re-derived here)",
                "masks": "privinfer adds none; the output share the server forwards is an additive share in "
                         "Z_2^64; masking of HE responses and OT messages is SPU's CHEETAH's (not re-derived here)",
                "input_private": True, "model_private": True, "output_to": "client only",
                "public": "architecture (layer kinds, shapes), batch size, timing, fixed-point precision",
                "transport": "SPU brpc link over plain TCP: use a trusted network or a TLS/VPN tunnel"}

    def close(self) -> None:
        if self.party is not None:
            self.party.close()
            self.party = None


@register
class Cheetah(Protocol):
    name = "cheetah"
    summary = "2PC without a dealer (SPU CHEETAH: HE products + silent-OT non-linearities); client and server only"
    inner_links = ("brpc: client SPU party <-> server SPU party",)
    server_options: dict[str, Any] = {"mpc_timeout": 60.0, "fxp_bits": 20}
    client_options: dict[str, Any] = {}

    def __init__(self, graph: Graph, **options):
        super().__init__(graph, **options)
        if float(self.options["mpc_timeout"]) <= 0:
            raise PrivinferError("mpc_timeout must be positive")
        bits = self.options["fxp_bits"]
        if not isinstance(bits, int) or not 8 <= bits <= 30:
            raise PrivinferError(f"fxp_bits must be an integer in 8..30, got {bits!r}")

    def server_side(self, client_options: dict) -> ServerSide:
        return _Server(self)

    @classmethod
    def client_side(cls, welcome: dict, graph: Graph, **client_options) -> ClientSide:
        return _Client(welcome, graph, cls.validate_client_options(client_options))
