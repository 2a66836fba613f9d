"""The two sides of an `ss` session: the server's rank-0 worker with its dealer, the client's rank-1 worker.

Why apart from the package's `__init__`: there the protocol class states the options and the threat model;
these classes run the phases (set-up, offline with the dealer, online, reveal to the client), and `hybrid`
reuses them for its 2PC segments. Who learns what: see the package docstring.
"""
from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import numpy as np

from ...errors import PrivinferError, ProtocolError, ShapeError, TimeoutError_
from ...model.ir import Graph, graph_to_bytes
from ...transport import Channel, frames
from ...transport.ports import free_port, peer_pending
from ..engine import EngineClient, EngineServer
from .steps import SSSegment, SSShare
from .tuples import plan_digest, plan_elements, validate_plan
from .auth import client_authenticate, key_id, load_secret
from .dealer import LocalDealer, RemoteDealer, relay_client_handshake
from .worker import ChildProcess, ifname_for, party_main
from .precision import check_precision
from .query_record import QueryRecord

if TYPE_CHECKING:  # the protocol class imports this module
    from . import SecretSharing

THREAT_MODEL = "semi-honest server and client, non-colluding dealer (CrypTen TTP)"
SPAWN_ALLOWANCE = 120.0  # seconds a fresh worker may take to import torch + CrypTen on a busy machine


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
        self._offline_start(ch, batch)
        self._offline_collect(ch, batch)

    def _offline_start(self, ch: Channel, batch: int) -> None:
        """Tell the client, start this party's and the dealer's generation, and return at once: the caller
        may work (e.g. a hybrid plan's first HE segment) while they run; `_offline_collect` finishes the phase."""
        t0 = time.perf_counter()
        blob, digest, elements = self._plan(batch)
        t_plan = time.perf_counter() - t0
        include = batch not in self.sent_plans
        ch.send_json({"offline": batch, "digest": digest, "plan_follows": include})
        if include:
            ch.send_bytes(blob)
            self.sent_plans.add(batch)
        pending = {"batch": batch, "plan_s": t_plan, "elements": elements, "dealer_error": None,
                   "dealer_counts": (self.dealer.bytes_sent, self.dealer.bytes_received, self.dealer.messages)}
        self.worker.send({"cmd": "generate"}, blob)
        pending["t1"] = time.perf_counter()
        try:
            self.dealer.start(blob)
        except PrivinferError as e:  # reported by the collect, which keeps the worker's pipe in step
            pending["dealer_error"] = e
        self._pending = pending

    def _offline_collect(self, ch: Channel, batch: int) -> None:
        pending, self._pending = getattr(self, "_pending", None), None
        if pending is None or pending["batch"] != batch:
            raise ProtocolError(f"the offline phase for batch {batch} was never started")
        d_sent, d_recv, d_msgs = pending["dealer_counts"]
        try:
            if pending["dealer_error"] is not None:
                raise pending["dealer_error"]
            dealer_blob = self._dealer_answer(pending)
        except PrivinferError as e:
            self.worker.recv(self.timeout, "generate")  # keep the pipe in step
            raise DealerError(f"the dealer failed during the offline phase: {e}") from None
        t_dealer = pending.get("t_dealer", time.perf_counter() - pending["t1"])
        gen, _ = self.worker.recv(self.timeout, "generate")
        self._fill(dealer_blob)
        ch.send_json({"offline_done": batch, "server": {
            "plan_s": pending["plan_s"], "dealer_s": t_dealer, "generate_s": gen["s"], "tuples": gen["tuples"],
            "ring_elements": pending["elements"],
            "bytes_server_to_dealer": self.dealer.bytes_sent - d_sent,
            "bytes_dealer_to_server": self.dealer.bytes_received - d_recv,
            "dealer_messages": self.dealer.messages - d_msgs, "dealer": self.dealer.where}})
        self.prepared = batch

    def _dealer_answer(self, pending: dict) -> bytes | None:
        """The dealer's tuples for this party (a hybrid session's may have been handed over already: `ss_seg`)."""
        return self.dealer.finish(self.timeout)

    def _fill(self, dealer_blob: bytes | None) -> None:
        self.worker.call({"cmd": "fill"}, dealer_blob, timeout=self.timeout)

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
        self._offline_start(ch, batch)
        return {**self._offline_collect(ch, batch), "offline_s": time.perf_counter() - t0}

    def _offline_start(self, ch: Channel, batch: int) -> None:
        """Read the server's offline message and start this party's generation; return at once (the caller
        may work while it runs); `_offline_collect` waits for it and the server's offline_done."""
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
        self.worker.send({"cmd": "generate"}, self.plans[batch])
        self._pending = batch

    def _offline_collect(self, ch: Channel, batch: int) -> dict:
        """The rest of the phase; `offline_s` is the time spent here (the caller adds its start's)."""
        t0 = time.perf_counter()
        pending, self._pending = getattr(self, "_pending", None), None
        if pending != batch:
            raise ProtocolError(f"the offline phase for batch {batch} was never started")
        gen, _ = self.worker.recv(self.timeout, "generate")
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
        outs, acc = [], QueryRecord()
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
