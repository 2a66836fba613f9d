"""The batch engine's helper process: a second SEAL process, because TenSEAL's `sealapi` holds the GIL.

Why a process: two threads run SEAL no faster than one (measured: `benchmarks/he_batch.py`), so the loops
that call SEAL once per unit use a child process for half of the units. One helper serves the whole parent
process, one job at a time (`acquire_helper`): on a server, loading the input ciphertexts and each Poly
layer's products (`batch_par.load_units` / `poly_units`, on shared tmpfs arrays); on a client, encrypting
half of each chunk of a streamed query (`encrypt_split`, `batch_stream.send_stream`).

It receives each context once (TenSEAL serialization): a server's without the secret key; a client's own
*with* its secret key -- the helper is the client's child process, on the client's machine, reached over a
pipe only it holds, so the key does not leave the client's trust domain (the server never sees it). Parent
and helper speak over the child's stdin/stdout with length-prefixed frames: JSON headers and raw payloads,
nothing is unpickled. The helper exits when its parent does (EOF on its stdin), and a helper that dies or
errs makes the parent redo that part itself.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import struct
import subprocess
import sys
import threading
import uuid
import weakref

import numpy as np

from ..._process import stop_child
from ...errors import ProtocolError
from . import batch_rns as rns
from .batch_par import SharedArrays, _maps, _open, _pool, load_units, poly_units
from .batch_rns import ts

# The helper is a plain `python -c` child speaking length-prefixed frames on its stdin/stdout: a JSON
# header, then raw payloads. It imports only numpy, TenSEAL and these modules: the bootstrap below stubs
# the parent packages so that privinfer/__init__ (torch, the server) is not imported, which keeps its
# start at ~0.5 s, and no parent __main__ is ever re-executed (as multiprocessing's spawn would).
_BOOT = (
    "import os, sys, types\n"
    "frames = os.dup(1); os.dup2(2, 1)\n"  # frames get a private fd; stray writes to fd 1 go to stderr
    "root = sys.argv[1]\n"
    "for name, sub in (('privinfer', ''), ('privinfer.protocols', 'protocols'), ('privinfer.protocols.he', 'protocols/he')):\n"
    "    m = types.ModuleType(name); m.__path__ = [os.path.join(root, sub)]; sys.modules[name] = m\n"
    "from privinfer.protocols.he.batch_helper import _helper_main\n"
    "_helper_main(frames)\n")


def _write_frame(fd: int, data: bytes) -> None:
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:
        k = os.write(fd, view)
        view = view[k:]


def _read_exact(fd: int, k: int) -> bytes:
    chunks, got = [], 0
    while got < k:
        b = os.read(fd, min(k - got, 1 << 20))
        if not b:
            raise EOFError("pipe closed")
        chunks.append(b)
        got += len(b)
    return b"".join(chunks)


def _send(fd: int, header: dict, *payloads: bytes) -> None:
    _write_frame(fd, json.dumps({**header, "_n": len(payloads)}).encode())
    for p in payloads:
        _write_frame(fd, p)


def _recv(fd: int) -> tuple[dict, list[bytes]]:
    def frame():
        (k,) = struct.unpack("<Q", _read_exact(fd, 8))
        return _read_exact(fd, k)
    header = json.loads(frame().decode())
    return header, [frame() for _ in range(int(header.pop("_n", 0)))]


def _helper_main(wfd: int) -> None:  # pragma: no cover - runs in the child process
    rfd = sys.stdin.fileno()
    kits: dict = {}
    while True:
        try:
            header, payloads = _recv(rfd)
        except (EOFError, OSError, ValueError):
            return  # parent gone
        op = header.get("op")
        try:
            if op == "exit":
                return
            if isinstance(op, str) and op.startswith("lat_"):  # a latency query's share (`latency_par`)
                from .latency_par_helper import handle
                rep = handle(header, payloads)
                if rep is not None:
                    _send(wfd, rep[0], *rep[1])
                continue
            if op == "context":
                kits[header["key"]] = rns.get_kit(ts.context_from(payloads[0]))
                _send(wfd, {"ok": True})
            elif op == "forget":
                kits.pop(header["key"], None)
            elif op == "unmap":
                for path in header["paths"]:
                    _maps.pop(path, None)
            elif op == "load":
                kit = kits[header["key"]]
                X = _open(header["X"])
                sc = load_units(kit, None, X, header["lo"], header["hi"], header["drops"],
                                (header["pid"], header["scale"]), paths=header["paths"])
                _send(wfd, {"ok": True, "scale": sc})
            elif op == "encrypt":  # client: positions lo..hi of the shared (b, n_in) inputs
                from .batch_stream import encrypt_positions
                kit = kits[header["key"]]
                blobs = encrypt_positions(kit.context, _open(header["X"]), header["lo"], header["hi"],
                                          header["scale"])
                _send(wfd, {"ok": True}, *blobs)
            elif op == "poly":
                kit = kits[header["key"]]
                X, Y = _open(header["X"]), _open(header["Y"])
                sc = poly_units(kit, X, Y, header["lo"], header["hi"], header["S"], header["drops"],
                                tuple(header["coeffs"]), header["poly_rho"])
                _send(wfd, {"ok": True, "scale": sc})
            else:
                _send(wfd, {"error": "other", "msg": f"unknown op {op!r}"})
        except ProtocolError as e:
            _send(wfd, {"error": "protocol", "msg": str(e)})
        except Exception as e:  # report, keep serving
            _send(wfd, {"error": "other", "msg": f"{type(e).__name__}: {e}"})


class Helper:
    """The parent's handle on the helper process; one job at a time (`lock`)."""

    def __init__(self):
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.proc = subprocess.Popen([sys.executable, "-c", _BOOT, root], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, close_fds=True)
        self.wfd, self.rfd = self.proc.stdin.fileno(), self.proc.stdout.fileno()
        self.lock = threading.Lock()
        self.known: set = set()
        self.broken = False

    def alive(self) -> bool:
        return not self.broken and self.proc.poll() is None

    def cpu_seconds(self) -> float:
        """CPU time the helper has used so far (Linux /proc; 0 elsewhere)."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError):
            return 0.0

    def send(self, header: dict, *payloads: bytes) -> None:
        try:
            _send(self.wfd, header, *payloads)
        except (OSError, ValueError) as e:
            self.broken = True
            raise _HelperFailed(f"helper pipe: {e}") from None

    def reply(self, timeout: float = 900.0, payloads: list | None = None) -> dict:
        ready, _, _ = select.select([self.rfd], [], [], timeout)
        if not ready:
            self.broken = True
            raise _HelperFailed("helper timed out")
        try:
            header, data = _recv(self.rfd)
        except (EOFError, OSError, ValueError) as e:
            self.broken = True
            raise _HelperFailed(f"helper died ({e})") from None
        global _helper_failures
        _helper_failures = 0  # it answered: failures are no longer "in a row"
        if header.get("error") == "protocol":
            raise ProtocolError(header["msg"])
        if header.get("error"):
            raise _HelperFailed(header["msg"])
        if payloads is not None:
            payloads.extend(data)
        return header

    def unmap_dropped(self) -> None:
        """Tell the helper to unmap pool buffers the parent deleted (call while holding `lock`)."""
        with _pool.lock:
            paths, _pool.dropped = _pool.dropped, []
        if paths and self.alive():
            try:
                self.send({"op": "unmap", "paths": paths})
            except _HelperFailed:
                pass

    def ensure_context(self, kit, secret: bool = False) -> str:
        """Send the kit's context once (with the secret key only when `secret`: a client's own helper)."""
        key = getattr(kit, "helper_key", None)
        if key is None:
            key = kit.helper_key = uuid.uuid4().hex
        if key not in self.known:
            blob = kit.context.serialize(save_public_key=True, save_secret_key=bool(secret),
                                         save_galois_keys=False, save_relin_keys=True)
            self.send({"op": "context", "key": key}, blob)
            self.reply()
            self.known.add(key)
            weakref.finalize(kit, _forget, weakref.ref(self), key)
        return key

    def close(self) -> None:
        stop_child(self.proc, lambda: _send(self.wfd, {"op": "exit"}))


class _HelperFailed(Exception):
    """The helper could not do its part; the caller redoes it in-process."""


def _forget(ref, key):
    h = ref()
    if h is not None and h.alive() and h.lock.acquire(blocking=False):
        try:
            h.send({"op": "forget", "key": key})
            h.known.discard(key)
        except Exception:
            pass
        finally:
            h.lock.release()


_helper: Helper | None = None
_helper_lock = threading.Lock()
_helper_failures = 0
MAX_HELPER_FAILURES = 3  # after this many dead helpers in a row, run everything in-process


def acquire_helper() -> Helper | None:
    """The process-wide helper, locked for one job, or None when it is busy, broken or disabled
    (PRIVINFER_HE_BATCH_HELPER=0)."""
    global _helper, _helper_failures
    if os.environ.get("PRIVINFER_HE_BATCH_HELPER", "1") == "0":
        return None
    with _helper_lock:
        if _helper is not None and not _helper.alive():
            _helper.close()
            _helper = None
            _helper_failures += 1
        if _helper_failures >= MAX_HELPER_FAILURES:
            return None
        if _helper is None:
            try:
                _helper = Helper()
                atexit.register(_helper.close)
            except Exception:
                return None
        h = _helper
    return h if h.lock.acquire(blocking=False) else None


__all__ = ["Helper", "acquire_helper"]


class ClientEncryptor:
    """A client's encryption of a streamed query, half of every chunk in the helper (when one is free):
    `set_group(flat)` for each slot group's (b, n_in) inputs, then `encrypt(lo, hi)` per chunk; `close()`.
    On any helper failure the rest is done in this process."""

    def __init__(self, context):
        self.context, self.kit = context, rns.get_kit(context)
        self.scale = float(context.global_scale)
        self.shared = SharedArrays()
        self.helper = acquire_helper() if self.kit.sk_encryptor is not None else None
        self.key = self.X = self.flat = None
        if self.helper is not None:
            try:
                self.key = self.helper.ensure_context(self.kit, secret=True)
            except _HelperFailed:
                self._drop()

    def _drop(self) -> None:
        if self.helper is not None:
            h, self.helper = self.helper, None
            h.unmap_dropped()
            h.lock.release()

    def set_group(self, flat: np.ndarray) -> None:
        self.flat = flat
        if self.helper is not None:
            if self.X is not None:
                self.shared.release(self.X)
            self.X = self.shared.array(flat.shape, np.float64)
            self.X[...] = flat

    def encrypt(self, lo: int, hi: int) -> list[bytes]:
        from .batch_stream import encrypt_positions
        if self.helper is None or hi - lo < 2:
            return encrypt_positions(self.context, self.flat, lo, hi, self.scale)
        mid = (lo + hi) // 2
        try:
            self.helper.send({"op": "encrypt", "key": self.key, "X": self.shared.spec(self.X), "lo": mid, "hi": hi,
                              "scale": self.scale})
        except _HelperFailed:
            self._drop()
            return encrypt_positions(self.context, self.flat, lo, hi, self.scale)
        try:
            local = encrypt_positions(self.context, self.flat, lo, mid, self.scale)
        except BaseException:
            self.helper.broken = True  # its reply is never read: replace it
            self._drop()
            raise
        rest: list = []
        try:
            self.helper.reply(payloads=rest)
        except (_HelperFailed, ProtocolError):
            self._drop()
            rest = []
        if len(rest) != hi - mid:
            rest = encrypt_positions(self.context, self.flat, mid, hi, self.scale)
        return local + rest

    def close(self) -> None:
        self.shared.close()
        self._drop()
