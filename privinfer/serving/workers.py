"""`privinfer serve --workers N`: N worker processes behind one port, with accept-and-hand-off.

Why processes: TenSEAL's SEAL bindings and CrypTen hold the GIL, so the threads of one server process
share one core for the CPU-bound part of concurrent sessions. Why accept-and-hand-off rather than
`SO_REUSEPORT`: the supervisor (this process) accepts every connection itself, so it *knows* how many
sessions are open in all workers together. `max_sessions` is one counter here, a busy refusal is a typed
ERROR frame sent from here, and when a worker dies the supervisor still holds a duplicate of each of its
connections and tells those clients why with a typed ERROR frame (with `SO_REUSEPORT` the kernel picks the
worker, a shared counter leaks the slots of a worker that dies, and the client sees a bare reset).

    client ──TCP──▶ supervisor: accept, count, pick the least loaded worker
                    └─ AF_UNIX + SCM_RIGHTS: {"id": k, "addr": ...} + the socket ─▶ worker: Server._handle
                    ◀─ {"done": k} ─────────────────────────────────────────────── (session over)

Frame sizes, timeouts and batch limits hold in every worker because every worker builds the same
`Server` from the same settings. The supervisor never reads client data after the hand-off.
Each worker is a fresh interpreter (`python -c`, not fork: the supervisor holds threads) that builds the
protocol once and exits with its supervisor (`exit_with_parent`); SIGTERM to the supervisor stops
accepting, ends the workers (SIGTERM, then SIGKILL after a grace period) and fails open sessions with a
typed error.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from .._process import alive, descendants
from ..errors import PrivinferError, ProtocolError, ResourceLimitError, WorkerDied
from ..model import compile_model
from ..model.ir import graph_to_bytes
from ..protocols.base import get_protocol, split_options
from ..server import DEFAULT_MAX_BATCH, DEFAULT_MAX_SESSIONS, _linger_close
from ..transport import Channel, DEFAULT_TIMEOUT
from ..transport.frames import DEFAULT_MAX_FRAME
from ..transport.tcp import listen

log = logging.getLogger("privinfer.serving")
_MSG = 4096  # control messages are small JSON datagrams (SOCK_SEQPACKET keeps their boundaries)
_BOOT = "import sys; from privinfer.serving.workers import worker_main; worker_main(int(sys.argv[1]))"


# ---------------------------------------------------------------------------------------------
# the worker process
# ---------------------------------------------------------------------------------------------
def _read_config(stream) -> tuple[dict, bytes]:
    raw = stream.read()
    n = struct.unpack("<I", raw[:4])[0]
    return json.loads(raw[4:4 + n]), raw[4 + n:]


def worker_main(fd: int) -> None:  # pragma: no cover - runs in the worker process (tests cover it end to end)
    """Build the Server from the config on stdin, then handle the connections handed over on `fd`."""
    from .._process import exit_with_parent
    from ..model.ir import load_graph
    from ..server import Server
    ctl = socket.socket(fileno=fd)
    cfg, graph = _read_config(sys.stdin.buffer)
    logging.basicConfig(level=cfg.get("log_level", logging.WARNING), format="privinfer worker %(levelname)s: %(message)s")
    exit_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the supervisor decides
    send_lock = threading.Lock()

    def send(obj: dict) -> None:
        with send_lock:
            ctl.send(json.dumps(obj).encode())

    try:
        srv = Server(load_graph(graph), cfg["protocol"], cfg["host"], None, **cfg["server"], **cfg["options"],
                     warn=os.environ.get(QUIET_ENV) != "1")
    except BaseException as e:  # report set-up errors to the supervisor, which raises them
        send({"error": type(e).__name__, "message": str(e)[:2000]})
        return
    send({"ready": os.getpid()})

    def run(conn: socket.socket, addr, sid: int) -> None:
        try:
            srv._handle(conn, addr)
        finally:
            try:
                send({"done": sid})
            except OSError:
                os._exit(0)  # supervisor gone

    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(ctl, _MSG, 1)
        except OSError:
            os._exit(0)
        if not msg:  # supervisor closed the control socket: shut down
            os._exit(0)
        req = json.loads(msg)
        if not fds:
            continue
        conn = socket.socket(fileno=fds[0])
        threading.Thread(target=run, args=(conn, tuple(req["addr"]), int(req["id"])), daemon=True,
                         name=f"privinfer-session-{req['id']}").start()


#: set for every worker but the first: a protocol's start-up warning (`Server`) is printed once, not per worker
QUIET_ENV = "PRIVINFER_WORKER_QUIET"


def worker_env(slot: int) -> dict | None:
    """The environment of the worker in `slot`: the supervisor's own, and for slots after the first QUIET_ENV."""
    return None if slot == 0 else {**os.environ, QUIET_ENV: "1"}


# ---------------------------------------------------------------------------------------------
# the supervisor's view of one worker
# ---------------------------------------------------------------------------------------------
class _Worker:
    def __init__(self, slot: int, config: bytes, env: dict | None = None):
        self.slot = slot
        self.ctl, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, str(child.fileno())], pass_fds=[child.fileno()],
                                     stdin=subprocess.PIPE, stdout=2, close_fds=True, env=env)
        child.close()
        self.started = time.monotonic()
        self.sessions: dict[int, socket.socket] = {}
        self.ready = False
        self._config = config

    def send_config(self) -> None:
        """Write the settings and the graph to the worker's stdin (blocks until it reads them)."""
        try:
            self.proc.stdin.write(self._config)
            self.proc.stdin.close()
        except OSError:
            pass  # died at once: the reader sees EOF

    @property
    def pid(self) -> int:
        return self.proc.pid

    def recv(self) -> dict | None:
        try:
            msg = self.ctl.recv(_MSG)
        except OSError:
            return None
        return json.loads(msg) if msg else None

    def hand_over(self, sid: int, conn: socket.socket, addr) -> None:
        socket.send_fds(self.ctl, [json.dumps({"id": sid, "addr": list(addr[:2])}).encode()], [conn.fileno()])

    def stop(self, grace: float) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(grace)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self.ctl.close()


def _typed(name: str, message: str) -> PrivinferError:
    """The worker's set-up error as the same privinfer error class (ParameterError, ...), else the base."""
    from .. import errors
    cls = getattr(errors, name, None)
    return cls(message) if isinstance(cls, type) and issubclass(cls, PrivinferError) else PrivinferError(message)


def _fail(conn: socket.socket, err: PrivinferError, timeout: float = 2.0) -> None:
    """Tell a client why its session ends (typed ERROR frame), then close our copy of its socket."""
    ch = Channel(conn, timeout=timeout, peer="client")
    ch.send_error(err)
    _linger_close(ch)


# ---------------------------------------------------------------------------------------------
# the supervisor
# ---------------------------------------------------------------------------------------------
class Supervisor:
    """One listening port, `workers` processes; `max_sessions` counts sessions across all of them."""

    def __init__(self, model: Any, protocol: str = "plain", host: str = "127.0.0.1", port: int = 0, *,
                 workers: int | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_sessions: int = DEFAULT_MAX_SESSIONS, max_batch: int = DEFAULT_MAX_BATCH,
                 max_frame: int = DEFAULT_MAX_FRAME, start_timeout: float = 600.0, grace: float = 5.0, **options):
        self.n = int(workers or os.cpu_count() or 1)
        if self.n < 1:
            raise PrivinferError(f"workers must be >= 1, got {workers}")
        if max_sessions < 1:
            raise PrivinferError(f"max_sessions must be >= 1, got {max_sessions}")
        graph = compile_model(model)
        cls = get_protocol(protocol)
        split_options(cls, options)  # unknown options fail here, before any process starts
        cls.check_graph(graph)
        if options.get("executor") == "ray" and self.n > 1:
            raise PrivinferError("executor 'ray' would start one local Ray per worker; start a cluster "
                                 "(`ray start --head`) and pass executor 'ray:auto' or 'ray://HOST:PORT'")
        self.protocol, self.max_sessions, self.grace, self.start_timeout = protocol, max_sessions, grace, start_timeout
        self.timeout = timeout
        head = json.dumps({"protocol": protocol, "host": host, "options": options,
                           "log_level": logging.getLogger().getEffectiveLevel(),
                           "server": {"timeout": timeout, "max_batch": max_batch, "max_frame": max_frame,
                                      # the supervisor admits sessions; a worker never refuses on its own
                                      "max_sessions": max_sessions, "torch_threads": 1}}).encode()
        self._config = struct.pack("<I", len(head)) + head + graph_to_bytes(graph)
        self._lock = threading.Condition()
        self._workers: list[_Worker | None] = [None] * self.n
        self._stop = threading.Event()
        self._next_id = 0
        self.open_sessions = 0
        self.restarts = 0
        self._sock = listen(host, port)
        self._sock.settimeout(0.5)
        self.host, self.port = self._sock.getsockname()[:2]
        try:
            for slot in range(self.n):
                self._spawn(slot)
            self._wait_ready()
        except BaseException:
            self.shutdown()
            raise

    # --- workers ----------------------------------------------------------------------------------
    def _spawn(self, slot: int) -> None:
        with self._lock:  # under the lock: shutdown() then sees every worker ever started
            if self._stop.is_set():
                return
            w = _Worker(slot, self._config, worker_env(slot))
            self._workers[slot] = w
        threading.Thread(target=self._watch, args=(w,), daemon=True, name=f"privinfer-worker-{slot}").start()

    def _wait_ready(self) -> None:
        end = time.monotonic() + self.start_timeout
        with self._lock:
            while not all(w is not None and w.ready for w in self._workers):
                if self._start_error:
                    raise _typed(*self._start_error)
                if time.monotonic() > end:
                    raise PrivinferError(f"the workers did not start within {self.start_timeout:.0f} s")
                self._lock.wait(0.2)

    _start_error: tuple[str, str] | None = None  # (error class name, message) reported by a worker

    def _watch(self, w: _Worker) -> None:
        """Read one worker's control messages; on EOF (it died) fail its sessions and replace it."""
        w.send_config()
        while True:
            msg = w.recv()
            if msg is None:
                break
            with self._lock:
                if "ready" in msg:
                    w.ready = True
                elif "done" in msg:
                    conn = w.sessions.pop(int(msg["done"]), None)
                    if conn is not None:
                        conn.close()
                        self.open_sessions -= 1
                elif "error" in msg:
                    self._start_error = (msg["error"], f"server failed to start: {msg['error']}: {msg['message']}")
                self._lock.notify_all()
        code = w.proc.wait()
        with self._lock:
            lost = list(w.sessions.values())
            w.sessions.clear()
            self.open_sessions -= len(lost)
            was_ready, w.ready = w.ready, False
            self._lock.notify_all()
        stopping = self._stop.is_set()
        if lost:
            why = "the server is shutting down" if stopping else f"the server worker handling it died (exit code {code})"
            log.warning("worker %d (pid %d) ended with %d open session(s): %s", w.slot, w.pid, len(lost), why)
            for conn in lost:
                threading.Thread(target=_fail, args=(conn, WorkerDied(f"session lost: {why}; reconnect")),
                                 daemon=True).start()
        w.ctl.close()
        if stopping or not was_ready:  # a worker that never became ready reported why (or startup fails)
            if not was_ready and not stopping and self._start_error is None:
                with self._lock:
                    self._start_error = ("", f"a server worker exited during start-up (exit code {code})")
                    self._lock.notify_all()
            return
        if time.monotonic() - w.started < 5.0:
            time.sleep(1.0)  # crash loop guard
        if not self._stop.is_set():
            self.restarts += 1
            log.warning("worker %d (pid %d) died (exit code %s); starting a replacement", w.slot, w.pid, code)
            self._spawn(w.slot)

    @property
    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers if w is not None and w.proc.poll() is None]

    # --- accepting --------------------------------------------------------------------------------
    def _dispatch(self, conn: socket.socket, addr) -> None:
        with self._lock:
            if self.open_sessions >= self.max_sessions:
                err = ResourceLimitError(f"server busy: {self.max_sessions} sessions already open")
            else:
                err = ProtocolError("no server worker is ready (one is being restarted); retry shortly")
                for w in sorted((w for w in self._workers if w is not None and w.ready), key=lambda w: len(w.sessions)):
                    sid, self._next_id = self._next_id, self._next_id + 1
                    try:
                        w.hand_over(sid, conn, addr)
                    except OSError:  # it just died: its watcher replaces it
                        continue
                    w.sessions[sid] = conn
                    self.open_sessions += 1
                    return
        threading.Thread(target=_fail, args=(conn, err), daemon=True).start()

    def serve_forever(self) -> None:
        """Accept until `shutdown()` or SIGTERM (when called from the main thread)."""
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, lambda *_: self._stop.set())
        try:
            while not self._stop.is_set():
                try:
                    conn, addr = self._sock.accept()
                except socket.timeout:
                    continue
                except OSError:
                    if self._stop.is_set():
                        break
                    time.sleep(0.1)
                    continue
                self._dispatch(conn, addr)
        finally:
            self.shutdown()

    def start(self) -> "Supervisor":
        threading.Thread(target=self.serve_forever, daemon=True, name="privinfer-supervisor").start()
        return self

    def shutdown(self) -> None:
        """Stop accepting, end every worker (SIGTERM, SIGKILL after `grace`), fail open sessions."""
        self._stop.set()
        try:
            self._sock.close()
        except OSError:
            pass
        with self._lock:
            workers = [w for w in self._workers if w is not None]
        # the workers' own children (ss parties, dealers, he helpers) exit with their parent; whatever
        # is still there after the grace period is killed, so that nothing outlives the server
        family = [p for w in workers if w.proc.poll() is None for p in descendants(w.pid)]
        for w in workers:
            if w.proc.poll() is None:
                w.proc.terminate()
        for w in workers:
            w.stop(self.grace)
            with self._lock:
                lost = list(w.sessions.values())
                w.sessions.clear()
            for conn in lost:
                _fail(conn, WorkerDied("session lost: the server is shutting down"), timeout=0.5)
        end = time.monotonic() + self.grace
        while any(alive(p) for p in family) and time.monotonic() < end:
            time.sleep(0.1)
        for p in family:
            if alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.shutdown()


def serve_workers(model: Any, protocol: str = "plain", host: str = "127.0.0.1", port: int = 0, **kw) -> Supervisor:
    """Start a multi-process server in the background and return its Supervisor (`.port` tells where)."""
    return Supervisor(model, protocol, host, port, **kw).start()
