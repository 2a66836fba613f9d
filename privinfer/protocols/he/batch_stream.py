"""Batch packing over the wire as a stream: the client encrypts chunk k+1 while chunk k travels and the
server loads it, instead of encrypt-all, send-all, load-all.

Why: at batch 4096 on cryptonets-mnist the client's encryption (784 seeded ciphertexts, one SEAL call each,
which holds the GIL: one core) and the server's loading of them (expanding each seed, checking it, copying
its residues: the server's two processes) were consecutive phases of about the same length, each leaving
a core idle. Streamed, they overlap; the upload (~170 MB) overlaps too.

Wire: the QUERY frame's meta says `{"batch": B, "chunks": K}`; K BLOBS frames follow, which together hold
the ciphertexts of every slot group in order (group-major, input position minor: exactly the single frame
of `executor.encrypt_groups`); one BLOBS frame of results comes back. A meta without "chunks" means one
frame. The server reads the frames on a thread of its own (`ChunkReader`) and hands the evaluation the
ciphertexts as they arrive; it checks the count of every frame against what is left, and any error ends
the session (the server closes the connection, so a reader blocked on it returns).

The client encrypts half of every chunk in its helper process (`batch_helper.ClientEncryptor`): one SEAL
call holds the GIL, so a second core needs a second process. Encryption (`encrypt_positions`) is the
client's seeded secret-key encryption (`seeded.py`), sound only
because the client holds the secret key; each ciphertext is encoded at the level the context's chain
starts from (the batch engine's plans use every data prime at the input: `batch_plan` drops a prime
before the first square only where that pays, which it does not for the zoo networks).
"""
from __future__ import annotations

import math
import queue
import threading

import numpy as np

from ...errors import PeerError, ProtocolError, ShapeError
from . import batch_rns as rns
from .batch_helper import ClientEncryptor
from .seeded import SeededEncryptor, save_bytes

CHUNK_CTS = 112  # ciphertexts per frame: 7 frames per cryptonets-mnist group (~25 MB each at N=8192)


# ---------------------------------------------------------------------------------------------
# client
# ---------------------------------------------------------------------------------------------
def chunk_plan(batch: int, slots: int, n_in: int, chunk: int | None = None) -> list[tuple[int, int, int]]:
    """(group, lo, hi) input-position ranges, in wire order."""
    chunk = int(chunk or CHUNK_CTS)
    groups = max(1, math.ceil(int(batch) / int(slots)))
    per = max(1, math.ceil(n_in / max(1, math.ceil(n_in / chunk))))  # even chunks
    return [(g, lo, min(n_in, lo + per)) for g in range(groups) for lo in range(0, n_in, per)]


def n_chunks(batch: int, slots: int, n_in: int) -> int:
    return len(chunk_plan(batch, slots, n_in))


def encrypt_positions(context, flat: np.ndarray, lo: int, hi: int, scale: float | None = None) -> list[bytes]:
    """Ciphertexts of input positions lo..hi-1 of one slot group: flat is (b, n_in), image i in slot i.
    Seeded secret-key encryption when the context holds the secret key, else public-key."""
    kit = rns.get_kit(context)
    b = flat.shape[0]
    if not 1 <= b <= kit.slots:
        raise ShapeError(f"batch {b} does not fit {kit.slots} slots (N={kit.n})")
    scale = float(context.global_scale) if scale is None else float(scale)
    pid = kit.parms_ids[kit.top_level]
    vec = np.zeros(kit.slots)
    out = []
    if kit.sk_encryptor is not None:
        enc = getattr(kit, "seeded", None)
        if enc is None:
            enc = kit.seeded = SeededEncryptor(kit.sc, context.secret_key().data, kit.encoder)
        for p in range(lo, hi):
            vec[:b] = flat[:, p]
            out.append(enc.encrypt(vec, scale, parms_id=pid))
        return out
    seal = rns.seal
    pt = seal.Plaintext()
    for p in range(lo, hi):
        vec[:b] = flat[:, p]
        kit.encoder.encode(vec.tolist(), pid, scale, pt)
        ct = seal.Ciphertext(kit.sc)
        kit.pk_encryptor.encrypt(pt, ct)
        out.append(save_bytes(ct))
    return out


def check_batch(x) -> np.ndarray:
    """(B, n_in) float64 view of a finite batch."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[0] < 1:
        raise ShapeError(f"expected a batch (B, ...), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ShapeError("input holds non-finite values")
    return arr.reshape(arr.shape[0], -1)


def send_stream(ch, context, x, slots: int) -> int:
    """Encrypt x chunk by chunk and send each chunk as one BLOBS frame from a second thread while the next
    is encrypted. Returns the number of frames sent (= n_chunks)."""
    flat = check_batch(x)
    plan = chunk_plan(flat.shape[0], slots, flat.shape[1])
    q: queue.Queue = queue.Queue(maxsize=2)
    failure: list = []

    def sender():
        while True:
            item = q.get()
            if item is None:
                return
            if failure:
                continue  # drain: the main thread stops at the next put
            try:
                ch.send_blobs(item)
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                failure.append(e)

    t = threading.Thread(target=sender, name="he-batch-upload", daemon=True)
    t.start()
    enc = ClientEncryptor(context)  # half of each chunk in the helper process (the other core)
    try:
        group = None
        for g, lo, hi in plan:
            if failure:
                break
            if g != group:
                group = g
                enc.set_group(np.ascontiguousarray(flat[g * slots:(g + 1) * slots]))
            q.put(enc.encrypt(lo, hi))
    finally:
        enc.close()
        q.put(None)
        t.join()
    if failure:  # the server stopped reading: its ERROR frame, when it sent one, says why
        if isinstance(failure[0], Exception):
            try:
                ch.recv_blobs()
            except PeerError:
                raise
            except Exception:
                pass
        raise failure[0]
    return len(plan)


# ---------------------------------------------------------------------------------------------
# server
# ---------------------------------------------------------------------------------------------
class ChunkReader:
    """Receives `chunks` BLOBS frames holding `total` ciphertexts on a thread, in order; `take(n)` returns
    the next n as lists, chunk piece by chunk piece (a generator), blocking until they arrive."""

    def __init__(self, ch, chunks: int, total: int):
        if isinstance(chunks, bool) or not isinstance(chunks, int) or not 1 <= chunks <= max(1, total):
            raise ProtocolError(f"chunks must be an integer in 1..{total}, got {chunks!r}")
        self.ch, self.chunks, self.total = ch, chunks, total
        self.q: queue.Queue = queue.Queue()
        self.left = total
        self._buf: list = []
        self.thread = threading.Thread(target=self._run, name="he-batch-download", daemon=True)
        self.thread.start()

    def _run(self):
        left = self.total
        try:
            for k in range(self.chunks):
                blobs = self.ch.recv_blobs()
                rest = self.chunks - k - 1
                if not blobs or len(blobs) > left - rest or (rest == 0 and len(blobs) != left):
                    raise ProtocolError(f"frame {k + 1} of {self.chunks} holds {len(blobs)} ciphertexts; "
                                        f"{left} of {self.total} were still expected")
                left -= len(blobs)
                self.q.put(blobs)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            self.q.put(e)

    def _next(self) -> list:
        item = self.q.get()
        if isinstance(item, BaseException):
            self.q.put(item)  # every later take fails the same way
            raise item
        return item

    def take(self, n: int):
        """Yield lists of ciphertexts summing to n, as they arrive."""
        if n > self.left:
            raise ProtocolError(f"{n} ciphertexts asked for, {self.left} left")
        self.left -= n
        while n > 0:
            if not self._buf:
                self._buf = self._next()
            piece, self._buf = self._buf[:n], self._buf[n:]
            n -= len(piece)
            yield piece

    def all(self) -> list:
        return [b for piece in self.take(self.left) for b in piece]

    def finish(self, timeout: float | None = None) -> None:
        """After the evaluation: the reader has nothing left to read."""
        self.thread.join(timeout)
