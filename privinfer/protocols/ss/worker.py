"""Processes of the `ss` protocol: spawning, the parent<->child pipe, and the CrypTen party main loop.

torch.distributed allows one process group per process, and a privinfer server serves each client in a
thread, so every CrypTen rank runs in its own child process (multiprocessing *spawn* context). Parent
and child speak over a duplex pipe with `send_bytes`/`recv_bytes` only: a JSON header, then optional raw
payloads (numpy arrays use privinfer's tensor codec). Nothing crossing a pipe is unpickled.

A child never outlives its parent: it polls `os.getppid()` and exits when it changes. The parent waits on
the pipe *and* the child's sentinel, so a dead child is noticed at once and a stalled one after the timeout.

Debugging aid: with PRIVINFER_SS_PROFILE=/some/prefix each party dumps a cProfile of its online phase
to /some/prefix.rank0 / .rank1.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import multiprocessing.connection as mpc
import os
import sys
import threading
import time

from ..._process import exit_with_parent, no_main_reimport
from ...errors import PrivinferError, ProtocolError, TimeoutError_
from ...transport import frames

PROCESS_PREFIX = "pi-ss-"


# --- the pipe protocol ----------------------------------------------------------------------------
def send_msg(conn, header: dict, *payloads: bytes) -> None:
    conn.send_bytes(json.dumps({**header, "_n": len(payloads)}).encode())
    for p in payloads:
        conn.send_bytes(p)


def recv_msg(conn) -> tuple[dict, list[bytes]]:
    header = json.loads(conn.recv_bytes().decode())
    payloads = [conn.recv_bytes() for _ in range(int(header.pop("_n", 0)))]
    return header, payloads


PRELOAD = "privinfer.protocols.ss.preload"
_ctx_lock = threading.Lock()


def context():
    """The multiprocessing context for CrypTen processes: a fork server that has torch + CrypTen loaded.

    Falls back to plain `spawn` where there is no fork server (non-POSIX) or PRIVINFER_SS_START=spawn.
    """
    method = os.environ.get("PRIVINFER_SS_START", "forkserver")
    if method not in mp.get_all_start_methods():
        method = "spawn"
    ctx = mp.get_context(method)
    if method == "forkserver":
        with _ctx_lock:
            import multiprocessing.forkserver as fs
            preload = list(getattr(fs._forkserver, "_preload_modules", []))
            if PRELOAD not in preload:
                ctx.set_forkserver_preload(preload + [PRELOAD])
    return ctx


def warm_up() -> None:
    """Start the fork server now (it imports torch and CrypTen in the background).

    Called when an `ss` server or client is built, never at import: the fork server preloads this package
    (`preload`), and an import-time call would make every fork server start another one."""
    ctx = context()
    if ctx.get_start_method() == "forkserver":
        try:
            import multiprocessing.forkserver as fs
            with no_main_reimport():
                fs.ensure_running()
        except Exception:
            pass


class ChildProcess:
    """A child process with a pipe; `call`/`recv` raise typed errors when it dies, stalls or fails."""

    def __init__(self, target, args: tuple, role: str):
        ctx = context()
        self.role = role
        self.conn, child_end = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(target=target, args=(*args, child_end), daemon=True, name=PROCESS_PREFIX + role)
        me = mp.current_process()
        daemonic = bool(me._config.get("daemon"))
        try:
            # multiprocessing refuses children in daemonic processes (so that they are not orphaned);
            # ours watch their parent and exit with it, so a daemonic client may still run 2PC
            if daemonic:
                me._config["daemon"] = False
            with no_main_reimport():  # a caller's script without a __main__ guard must not re-run
                self.proc.start()
        finally:
            if daemonic:
                me._config["daemon"] = True
        child_end.close()
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.is_alive()

    def send(self, header: dict, *payloads: bytes) -> None:
        try:
            send_msg(self.conn, header, *payloads)
        except (OSError, EOFError, ValueError):
            raise self._dead_error() from None

    def recv(self, timeout: float, what: str) -> tuple[dict, list[bytes]]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError_(f"{self.role} gave no answer to {what} within {timeout:.0f} s")
            ready = mpc.wait([self.conn, self.proc.sentinel], timeout=left)
            if self.conn in ready:
                try:
                    header, payloads = recv_msg(self.conn)
                except (EOFError, OSError):
                    raise self._dead_error() from None
                if "error" in header:
                    raise ProtocolError(f"{self.role}: {header['error']}: {header.get('message', '')}")
                return header, payloads
            if ready:  # sentinel only: the child exited without answering
                raise self._dead_error()

    def call(self, header: dict, *payloads: bytes, timeout: float, what: str | None = None):
        self.send(header, *payloads)
        return self.recv(timeout, what or header.get("cmd", "a request"))

    def _dead_error(self) -> ProtocolError:
        self.proc.join(0.5)
        code = self.proc.exitcode
        return ProtocolError(f"{self.role} process died (exit code {code})" if code is not None
                             else f"{self.role} process stopped answering")

    def close(self, grace: float = 2.0) -> None:
        """Ask the child to exit, then terminate/kill; never raises."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.proc.is_alive():
                try:
                    send_msg(self.conn, {"cmd": "exit"})
                except Exception:
                    pass
                self.proc.join(grace)
            if self.proc.is_alive():
                self.proc.terminate()
                self.proc.join(2.0)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(2.0)
        except Exception:
            pass
        try:
            self.conn.close()
        except Exception:
            pass


# --- child-side helpers -----------------------------------------------------------------------------
def child_setup(role: str) -> None:
    """Name the process (visible in ps and /proc/PID/comm) and exit when the parent goes away."""
    try:
        import ctypes
        libc = ctypes.CDLL(None)
        libc.prctl(15, (PROCESS_PREFIX + role)[:15].encode(), 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass
    exit_with_parent(interval=0.2, code=3)


def end_child(conn) -> None:
    """Close the pipe to the parent and exit at once. No crypten.uninit: its shutdown handshake would
    block on a dead peer."""
    try:
        conn.close()
    except Exception:
        pass
    sys.stdout.flush()
    os._exit(0)


def report_error(conn, exc: BaseException) -> None:
    try:
        send_msg(conn, {"error": type(exc).__name__, "message": str(exc)[:2000]})
    except Exception:
        pass


def ifname_for(ip: str) -> str | None:
    """The network interface that carries IPv4 address `ip` (Linux), for GLOO_SOCKET_IFNAME.

    gloo advertises the address its host name resolves to, which on many machines is a loopback alias;
    binding it to the interface the privinfer channel already uses makes multi-host runs work unaided.
    """
    import socket
    import struct
    ip = ip[7:] if ip.startswith("::ffff:") else ip
    if ":" in ip:
        return None
    if ip.startswith("127."):
        return "lo"
    try:
        import fcntl
        for _, name in socket.if_nameindex():
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                try:
                    raw = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", name[:15].encode()))  # SIOCGIFADDR
                except OSError:
                    continue
                if socket.inet_ntoa(raw[20:24]) == ip:
                    return name
    except (ImportError, OSError):
        pass
    return None


def mpc_env(rank: int, rendezvous: str, ifname: str | None) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", RENDEZVOUS=rendezvous, DISTRIBUTED_BACKEND="gloo")
    if ifname:
        os.environ["GLOO_SOCKET_IFNAME"] = ifname
    elif rendezvous.startswith("tcp://127.") or rendezvous.startswith("tcp://localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")


def load_mpc(opts: dict):
    """Import and configure CrypTen in a party or dealer process (before crypten.init)."""
    import torch
    torch.set_num_threads(max(1, int(opts.get("threads", 1))))
    from ..._compat.crypten_import import load_crypten
    from .crypten_setup import configure, install_secure_prg, patch_timeouts
    crypten = load_crypten()
    configure(crypten, int(opts["precision_bits"]))
    patch_timeouts(float(opts["mpc_timeout"]))
    key = opts.get("prg_key")  # hex, agreed with an authenticated dealer (parties only)
    install_secure_prg(crypten, bytes.fromhex(key) if key else None)
    return crypten


# --- a CrypTen party (rank 0 = server / model owner, rank 1 = client / input owner) -----------------
def party_init(rank: int, rendezvous: str, opts: dict):
    """Join the CrypTen group as `rank`: (crypten, counting communicator, tuple provider)."""
    mpc_env(rank, rendezvous, opts.get("gloo_ifname"))
    crypten = load_mpc(opts)
    crypten.init()
    from .crypten_setup import install_communicator
    from .tuples import install_provider
    comm = install_communicator(crypten)
    return crypten, comm, install_provider(crypten)


def party_main(rank: int, rendezvous: str, graph_blob: bytes, opts: dict, conn) -> None:
    child_setup(f"party{rank}")
    try:
        t0 = time.perf_counter()
        crypten, comm, prov = party_init(rank, rendezvous, opts)
        from ...model.ir import load_graph
        from .lowering import Executor
        ex = Executor(crypten, load_graph(graph_blob), rank, int(opts["precision_bits"]))
        send_msg(conn, {"ok": "ready", "init_s": time.perf_counter() - t0})
        _Party(crypten, comm, prov, ex, rank, conn).loop()
    except BaseException as e:  # noqa: BLE001 - every failure goes to the parent, typed
        report_error(conn, e)
    finally:
        end_child(conn)


class _Party:
    def __init__(self, crypten, comm, prov, ex, rank, conn):
        self.crypten, self.comm, self.prov, self.ex, self.rank, self.conn = crypten, comm, prov, ex, rank, conn
        self.plans: dict[int, list] = {}

    def loop(self) -> None:
        while True:
            try:
                msg, payloads = recv_msg(self.conn)
            except (EOFError, OSError):
                return
            cmd = msg.get("cmd")
            if cmd == "exit":
                return
            handler = getattr(self, f"cmd_{cmd}", None)
            if handler is None:
                raise PrivinferError(f"unknown worker command {cmd!r}")
            handler(msg, payloads)

    def cmd_plan(self, msg, payloads) -> None:
        """Dry run for one batch size: record the ordered tuple requests; no data leaves the process."""
        batch = int(msg["batch"])
        t0 = time.perf_counter()
        plan = self.plans.get(batch) or self._dry_run(batch)
        self.plans[batch] = plan
        send_msg(self.conn, {"ok": "plan", "s": time.perf_counter() - t0}, json.dumps(plan).encode())

    def _dry_run(self, batch: int) -> list:
        import numpy as np

        def forward():
            x = np.zeros((batch, *self.ex.graph.input_shape)) if self.rank == 1 else None
            self.ex.reveal_to_client(self.ex.forward(self.ex.share_input(x, batch)))
        return self._record(forward)

    def _record(self, run) -> list:
        """Run `run()` dry: record the ordered tuple requests it makes, send nothing, and leave CrypTen's
        generators as they were (the real run must draw the same randomness)."""
        import crypten
        saved = {k: {d: g.get_state() for d, g in gens.items()} for k, gens in crypten.generators.items()}
        self.comm.dry, self.prov.mode, self.prov.recorded = True, "record", []
        try:
            run()
            return list(self.prov.recorded)
        finally:
            for k, gens in crypten.generators.items():
                for d, g in gens.items():
                    g.set_state(saved[k][d])
            self.comm.dry, self.prov.mode, self.prov.recorded = False, "online", []

    def cmd_generate(self, msg, payloads) -> None:
        """Offline: derive this party's share of every tuple of the plan (party 0: all but the dealer's part)."""
        from .tuples import validate_plan
        t0 = time.perf_counter()
        plan = validate_plan(json.loads(payloads[0].decode()))
        self.prov.mode = "generate"
        try:
            self.prov.generate(plan)
        finally:
            self.prov.mode = "online"
        send_msg(self.conn, {"ok": "generated", "s": time.perf_counter() - t0, "tuples": len(plan)})

    def cmd_fill(self, msg, payloads) -> None:
        t0 = time.perf_counter()
        self.prov.fill(payloads[0])
        send_msg(self.conn, {"ok": "filled", "s": time.perf_counter() - t0})

    def cmd_online(self, msg, payloads) -> None:
        """The input-dependent phase: only party 0 <-> party 1 messages; tuples come from the queue."""
        from .tuples import TupleMismatchError
        batch = int(msg["batch"])
        x = frames.decode_tensor(payloads[0]) if self.rank == 1 else None
        before = self.comm.counters.as_dict()
        c0 = time.process_time()
        t0 = time.perf_counter()
        prof = os.environ.get("PRIVINFER_SS_PROFILE")
        if prof:
            import cProfile
            pr = cProfile.Profile()
            pr.enable()
        out = self.ex.reveal_to_client(self.ex.forward(self.ex.share_input(x, batch)))
        dt = time.perf_counter() - t0
        if prof:
            pr.disable()
            pr.dump_stats(f"{prof}.rank{self.rank}")
        if self.prov.remaining():
            raise TupleMismatchError(f"{self.prov.remaining()} preprocessed tuples left unused")
        after = self.comm.counters.as_dict()
        stats = {k: after[k] - before[k] for k in after}
        header = {"ok": "online", "s": dt, "cpu_s": time.process_time() - c0, "comm": stats,
                  "dealer_requests": self.prov.dealer_requests}
        if self.rank == 1:
            send_msg(self.conn, header, frames.encode_tensor(out.numpy()))
        else:
            send_msg(self.conn, header)
