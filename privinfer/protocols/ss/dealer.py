"""The dealer of the `ss` protocol: CrypTen's trusted third party (rank 2), answering in batches.

CrypTen's `TTPServer` answers one request per round trip while the parties compute. Here the dealer
process subclasses it, keeps its generation code (`additive`, `binary`, `square`, `wraps`, `B2A`) and
answers a whole *plan* (every request of one inference, recorded by a dry run) with one blob, before
the input exists. The parties derive their own shares from 256-bit keys shared with the dealer
(SHAKE-128 streams, see `ss.crypten_setup.XofGenerator`); only party 0's share of each product (c, r², θ_r,
r_A) travels, dealer -> server.

Two ways to run it:
* per session, spawned by the model server (`LocalDealer`, `dealer="local"`): simple, but the server's
  operator then runs the dealer, which sends both parties their keys: no input privacy against that
  operator. Clients see the guarantee "cryptographic-server-dealer".
* as a separate service on a third host: `privinfer dealer --server-secret S --client-secret C`
  (`run_dealer`), which the server reaches with `dealer="H:P", server_secret=S` (`RemoteDealer`). Both
  parties authenticate it with their own pre-shared secret and derive their PRG keys from it
  (`auth.py`); the client's handshake is relayed by the server, which cannot forge or read it. Each
  session gets its own dealer process; the service survives any session.
"""
from __future__ import annotations

import json
import logging
import socket
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ...errors import PeerError, PrivinferError, ProtocolError
from ...transport import Channel, FrameType, connect as tcp_connect
from ...transport.tcp import ThreadedListener
from .auth import DealerAuthError, DealerChoiceError, DealerHandshake, PartyHandshake, load_secret, secret_table
from .worker import (ChildProcess, child_setup, end_child, ifname_for, load_mpc, mpc_env, recv_msg, report_error,
                        send_msg, warm_up)

log = logging.getLogger("privinfer.dealer")
DEFAULT_DEALER_PORT = 7551
DEFAULT_IDLE_TIMEOUT = 3600.0


def dealer_main(rendezvous: str, opts: dict, conn) -> None:
    """Child process body: join the rendezvous as rank 2, hand out keys, answer plans until told to stop."""
    child_setup("dealer")
    try:
        mpc_env(2, rendezvous, opts.get("gloo_ifname"))
        crypten = load_mpc(opts)
        keys = [bytes.fromhex(k) for k in opts["prg_keys"]] if opts.get("prg_keys") else None
        dealer = _make_dealer(crypten, keys)
        send_msg(conn, {"ok": "ready"})
        while True:
            try:
                msg, payloads = recv_msg(conn)
            except (EOFError, OSError):
                break
            if msg.get("cmd") == "exit":
                break
            if msg.get("cmd") != "generate":
                raise PrivinferError(f"unknown dealer command {msg.get('cmd')!r}")
            t0 = time.perf_counter()
            blob = dealer.batch(json.loads(payloads[0].decode()), int(opts.get("max_elements", 1 << 28)))
            send_msg(conn, {"ok": "generated", "s": time.perf_counter() - t0}, blob)
    except BaseException as e:  # noqa: BLE001
        report_error(conn, e)
    finally:
        end_child(conn)


def _make_dealer(crypten, preset_keys: list[bytes] | None = None):
    import crypten.communicator as comm
    import numpy as np
    import torch
    import torch.distributed as dist
    from crypten.mpc.provider.ttp_provider import TTPServer

    from .crypten_setup import XofGenerator, key_to_tensor, new_key
    from .tuples import DEALER_FUNCS, plan_elements, validate_plan

    class BatchDealer(TTPServer):
        """CrypTen's TTPServer without its request loop; `batch` answers a whole plan at once."""

        def __init__(self):  # noqa: D401 - deliberately does not call TTPServer.__init__ (its loop)
            crypten.init()
            self.ttp_group = comm.get().ttp_group
            self.comm_group = comm.get().ttp_comm_group
            self.device = None
            self._setup_generators()

        def _setup_generators(self):
            """Keys agreed in the authenticated handshake (`preset_keys`), or else one fresh 256-bit key
            per party (os.urandom) sent over the dealer<->party gloo link (local dealer only)."""
            ws = comm.get().get_world_size()
            if preset_keys is not None:
                if len(preset_keys) != ws:
                    raise ProtocolError(f"dealer has {len(preset_keys)} party keys for {ws} parties")
                keys = list(preset_keys)
            else:
                keys = [new_key() for _ in range(ws)]
                reqs = [dist.isend(key_to_tensor(keys[i]), dst=i, group=self.ttp_group) for i in range(ws)]
                for r in reqs:
                    r.wait()
            dist.barrier(group=self.ttp_group)
            self.generators = [XofGenerator(k) for k in keys]
            self.generators_cuda = [None] * ws

        def batch(self, plan, max_elements: int) -> bytes:
            plan = validate_plan(plan)
            if plan_elements(plan) > max_elements:
                raise ProtocolError(f"plan needs {plan_elements(plan)} ring elements; dealer limit {max_elements}")
            out = []
            for e in plan:
                kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in e["k"].items()}
                if e["f"] == "generate_additive_triple":
                    args = (tuple(e["a"][0]), tuple(e["a"][1]), *e["a"][2:])
                else:
                    args = tuple(tuple(a) for a in e["a"])
                r = getattr(self, DEALER_FUNCS[e["f"]])(*args, **kw)
                if list(r.shape) != e["o"]:
                    raise ProtocolError(f"plan entry {e['f']} promises shape {e['o']}, generation gave {list(r.shape)}")
                out.append(r.reshape(-1))
            if not out:
                return b""
            return np.asarray(torch.cat(out).numpy(), dtype="<i8").tobytes()

    return BatchDealer()


# --- the server's handle on its dealer ------------------------------------------------------------
def check_dealer_choice(dealer, secret) -> bytes | None:
    """Validate the server's `dealer` / `server_secret` options; return the server's secret (or None)."""
    if dealer is None:
        raise DealerChoiceError(
            "protocol 'ss' needs a dealer, and there is no default: dealer='local' (the server spawns it "
            "and holds both parties' PRG keys: no input privacy against this server's operator) or "
            "dealer='HOST:PORT' with server_secret=FILE (a `privinfer dealer` on a third host, "
            "authenticated by both parties)")
    if dealer == "local":
        if secret is not None:
            raise DealerChoiceError("server_secret authenticates a third-party dealer; dealer='local' has none")
        return None
    if ":" not in str(dealer):
        raise DealerChoiceError(f"dealer must be 'local' or 'host:port', got {dealer!r}")
    if secret is None:
        raise DealerChoiceError(f"a third-party dealer ({dealer}) needs server_secret: the secret file "
                                "the dealer's operator gave this server")
    return load_secret(secret)


def relay_client_handshake(ch: Channel, dealer: "RemoteDealer") -> None:
    """Pass the client's two handshake messages to the dealer and its answers back. The server cannot
    forge the dealer's answers (it lacks the client's secret) nor learn the key derived from them."""
    for step in ("dealer_hello", "dealer_confirm"):
        msg = ch.recv_json()
        if not isinstance(msg.get(step), dict):
            raise ProtocolError(f"expected the client's {step} for the third-party dealer")
        reply = dealer.relay(msg[step])
        ch.send_json(reply)
        if "dealer_error" in reply:
            raise DealerAuthError(f"the dealer refused the client: {reply['dealer_error']}")


class LocalDealer:
    """A dealer process spawned for one session by the model server."""
    where = "local"

    def __init__(self, rendezvous: str, opts: dict):
        self.child = ChildProcess(dealer_main, (rendezvous, opts), "dealer")
        self.bytes_sent = self.bytes_received = self.messages = 0

    def start(self, plan_blob: bytes) -> None:
        self.child.send({"cmd": "generate"}, plan_blob)
        self.bytes_sent += len(plan_blob)
        self.messages += 1

    def finish(self, timeout: float) -> bytes:
        while True:
            msg, payloads = self.child.recv(timeout, "a preprocessing request")
            if msg.get("ok") == "ready":
                continue
            self.bytes_received += len(payloads[0])
            self.messages += 1
            return payloads[0]

    @property
    def pid(self):
        return self.child.pid

    def close(self) -> None:
        self.child.close()


class RemoteDealer:
    """A session on a `privinfer dealer` service, over a privinfer channel, authenticated with the
    server's pre-shared secret (`auth.py`) before anything else is sent; `prg_key` is party 0's key."""
    where = "third-party"

    def __init__(self, address: str, rendezvous: str, opts: dict, timeout: float, secret: bytes):
        host, _, port = str(address).rpartition(":")
        if not host or not port.isdigit():
            raise PrivinferError(f"dealer address must be host:port, got {address!r}")
        self.ch = tcp_connect(host.strip("[]"), int(port), timeout=timeout)
        self.ch.peer = f"dealer {address}"
        hs = PartyHandshake(0, secret, rendezvous)
        try:
            self.ch.send_json({"protocol": "ss-dealer", "rendezvous": rendezvous, "auth": hs.hello(),
                               "options": {k: v for k, v in opts.items() if k in DEALER_OPTION_KEYS}}, FrameType.HELLO)
            welcome = self.ch.recv_json(FrameType.WELCOME)
            confirm, self.prg_key = hs.finish(welcome.get("auth"))
            self.ch.send_json(confirm)
            if self.ch.recv_json().get("ok") != "server authenticated":
                raise ProtocolError("the dealer did not confirm the server's handshake")
        except PeerError as e:
            self.ch.close()
            raise DealerAuthError(f"the dealer refused this server: {e}") from None
        except BaseException:
            self.ch.close()
            raise
        self.pid = None

    def relay(self, msg: dict) -> dict:
        """Forward one handshake message of the client; {"dealer": answer} or {"dealer_error": why}."""
        self.ch.send_json({"client": msg})
        try:
            return {"dealer": self.ch.recv_json()}
        except PeerError as e:
            return {"dealer_error": str(e)}

    @property
    def bytes_sent(self):
        return self.ch.stats.bytes_sent

    @property
    def bytes_received(self):
        return self.ch.stats.bytes_received

    @property
    def messages(self):
        return self.ch.stats.messages_sent + self.ch.stats.messages_received

    def start(self, plan_blob: bytes) -> None:
        self.ch.send_bytes(plan_blob)

    def finish(self, timeout: float) -> bytes:
        old = self.ch.timeout
        self.ch.timeout = timeout
        try:
            return self.ch.recv_bytes()
        finally:
            self.ch.timeout = old

    def close(self) -> None:
        try:
            self.ch.send_frame(FrameType.BYE)
        except PrivinferError:
            pass
        self.ch.close()


# --- the dealer service (`privinfer dealer`) --------------------------------------------------------
DEALER_OPTION_KEYS = ("precision_bits", "mpc_timeout", "threads", "gloo_ifname")


class DealerServer(ThreadedListener):
    """Accept model servers; give each session its own dealer process; survive any session."""
    thread_prefix = "privinfer-dealer"

    def __init__(self, host: str = "127.0.0.1", port: int = DEFAULT_DEALER_PORT, *, server_secrets=(),
                 client_secrets=(), max_sessions: int = 16, idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 mpc_timeout: float = 60.0, max_elements: int = 1 << 28, gloo_ifname: str | None = None):
        # secrets: files (hex) or bytes; one table per role, so a server secret never passes for a client's
        self.server_secrets, self.client_secrets = secret_table(server_secrets), secret_table(client_secrets)
        if not self.server_secrets or not self.client_secrets:
            raise DealerChoiceError("a dealer service needs at least one server secret and one client secret "
                                    "(`privinfer dealer --new-secret FILE` makes one): both parties authenticate it")
        if set(self.server_secrets) & set(self.client_secrets):
            raise DealerChoiceError("a secret is given both as a server and as a client secret: the server "
                                    "could then impersonate this dealer to its clients")
        super().__init__(host, port)
        self.idle_timeout, self.mpc_timeout, self.max_elements = idle_timeout, mpc_timeout, max_elements
        self.gloo_ifname = gloo_ifname
        warm_up()  # the first session does not wait for torch + CrypTen in the fork server
        self._slots = threading.BoundedSemaphore(max_sessions)
        self.sessions = 0
        self.failed = 0
        self.auth_failures = 0

    def _handle(self, conn: socket.socket, addr) -> None:
        ch = Channel(conn, timeout=self.idle_timeout, peer=f"server {addr[0]}:{addr[1]}")
        if not self._slots.acquire(blocking=False):
            ch.send_error(PrivinferError("dealer busy"))
            ch.close()
            return
        child = None
        try:
            hello = ch.recv_json(FrameType.HELLO)
            rdv = hello.get("rendezvous")
            if hello.get("protocol") != "ss-dealer" or not isinstance(rdv, str) or not rdv.startswith("tcp://"):
                raise ProtocolError("expected an ss-dealer HELLO with a tcp:// rendezvous")
            given = hello.get("options") or {}
            bits = given.get("precision_bits", 16)
            if not isinstance(bits, int) or not 1 <= bits <= 62:
                raise ProtocolError(f"precision_bits {str(bits)[:20]} out of range")
            # both parties authenticate this dealer (and it them) before its CrypTen process exists
            hs0 = DealerHandshake(self.server_secrets, 0, rdv)
            ch.send_json({"ok": True, "auth": hs0.answer(hello.get("auth"))}, FrameType.WELCOME)
            k0 = hs0.confirm(ch.recv_json())
            ch.send_json({"ok": "server authenticated"})
            hs1 = DealerHandshake(self.client_secrets, 1, rdv)
            ch.send_json(hs1.answer(ch.recv_json().get("client")))
            k1 = hs1.confirm(ch.recv_json().get("client"))
            opts = {"precision_bits": bits, "mpc_timeout": self.mpc_timeout,
                    "threads": 1, "max_elements": self.max_elements, "prg_keys": [k0.hex(), k1.hex()],
                    "gloo_ifname": self.gloo_ifname or ifname_for(conn.getsockname()[0])}
            child = ChildProcess(dealer_main, (rdv, opts), "dealer")
            self.sessions += 1
            ch.send_json({"ok": "ready"})
            while True:
                ftype, payload = ch.expect(FrameType.BYTES, FrameType.BYE)
                if ftype == FrameType.BYE:
                    break
                child.send({"cmd": "generate"}, payload)
                while True:
                    msg, payloads = child.recv(self.mpc_timeout + 60.0, "a preprocessing request")
                    if msg.get("ok") != "ready":
                        break
                ch.send_bytes(payloads[0])
        except PrivinferError as e:
            self.failed += 1
            if isinstance(e, DealerAuthError):
                self.auth_failures += 1
            log.info("dealer session %s: %s", ch.peer, e)
            if "closed the connection" not in str(e):
                ch.send_error(e)
        except Exception as e:  # noqa: BLE001
            self.failed += 1
            log.exception("dealer session %s", ch.peer)
            ch.send_error(ProtocolError(f"dealer failed: {type(e).__name__}: {e}"))
        finally:
            if child is not None:
                child.close()
            ch.close()
            self._slots.release()


def run_dealer(host: str = "127.0.0.1", port: int = DEFAULT_DEALER_PORT, **kw) -> None:
    """Entry point for `privinfer dealer`: serve until interrupted."""
    srv = DealerServer(host, port, **kw)
    print(f"privinfer dealer (ss / CrypTen TTP) listening on {srv.host}:{srv.port}; server key ids "
          f"{sorted(srv.server_secrets)}, client key ids {sorted(srv.client_secrets)}", flush=True)
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        srv.shutdown()


@contextmanager
def loopback_dealer(**kw):
    """A `privinfer dealer` on 127.0.0.1 in this process, with fresh secrets for one server and its clients
    (benchmarks, demos): yields the `ss` options a one-machine session needs to use it."""
    from .auth import new_secret_file
    with tempfile.TemporaryDirectory() as tmp:
        server, client = str(Path(tmp) / "server.psk"), str(Path(tmp) / "client.psk")
        new_secret_file(server)
        new_secret_file(client)
        with DealerServer("127.0.0.1", 0, server_secrets=[server], client_secrets=[client], **kw) as d:
            yield {"dealer": f"127.0.0.1:{d.port}", "server_secret": server, "client_secret": client}
