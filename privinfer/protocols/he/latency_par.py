"""A channel-packed convolution's terms shared with a second process, so a latency query uses both cores.

Why: TenSEAL's `sealapi` holds the GIL (two threads of rotations run slower than one), and a batch-1 query
is one chain of SEAL calls, so the server used one core while the client idled. A `RotStep`'s terms
(o, c, g, b) are independent sums: `split_rot` gives a share of them to the process-wide HE helper
(`batch_helper`, the batch engine's second SEAL process), chosen by a cost model (rotations, products,
ciphertexts moved) among three cuts -- by output ciphertext, by baby (a later part of the baby chain, with
its ancestors recomputed) and by giant -- and only when the slower side is clearly under the serial cost.
Both processes then run `convpack_eval.rot_partials` on their share; the parent adds the helper's per-output
partial sums to its own before the fold and rescale. Same arithmetic, different order of additions.
A dense layer's one-ciphertext diagonal step (`latency_plan.DiagStep`: minionn-mnist-he's 1024-to-100 layer, ~20 %
of a query's CPU, was serial) is shared the same way through `diag_view`, the `RotStep` that performs its very
rotations and products; its fold (the rotate-and-sum after the products) stays with the parent.

Wire (parent <-> helper, its private stdin/stdout pipe, JSON headers + raw payloads, nothing unpickled):
    lat_plan   once per compiled plan: each split step's terms, its share and its plaintext slot vectors
               (float64) with scale and level; the helper encodes them (the weights stay on the server).
    lat_keys   once per connection: its relinearization and Galois keys (as received the first time, else
               serialized again: `ParSession`); the reply names connections the helper dropped to make room.
    lat_rot    per query and split step: the merged input ciphertexts -> one partial sum per output (or b"").
    lat_forget a connection's keys / a plan's plaintexts when they are gone.
The helper holds only what the server holds (public keys, the server's own plaintexts); its side of these
messages, and its least-recently-used cache of connections' keys, is `latency_par_helper.py`. Any helper
failure (died, timed out, busy with another connection, dropped the keys) makes the parent compute that
share itself.
PRIVINFER_HE_LATENCY_HELPER=0 (or PRIVINFER_HE_BATCH_HELPER=0) runs everything in-process, and so does a
machine with no free core at that moment (`core_is_free`): the split costs ~30 % more CPU in all.
"""
from __future__ import annotations

import os
import threading
import time
import uuid
import weakref

import numpy as np

from ...errors import ProtocolError

#: relative costs at one level (measured, N=16384, 2-5 primes: a mul_plain ~0.07 rotations, an add ~0.016,
#: moving a ciphertext through the helper's pipe -- dump, write, read, load -- ~0.35)
C_ROT, C_MUL, C_ADD, C_MOVE = 1.0, 0.07, 0.016, 0.35
#: a split is used only when its slower side costs at most this fraction of the serial step
MIN_GAIN = 0.85
#: seconds the parent waits for the helper's share before computing it itself
REPLY_TIMEOUT = 60.0
#: seconds between two attempts to prepare a connection's helper share (after a busy machine or a new helper)
RETRY_S = 30.0


def enabled() -> bool:
    return os.environ.get("PRIVINFER_HE_LATENCY_HELPER", "1") != "0"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _runnable() -> int | None:
    """Threads running or waiting for a CPU right now, machine-wide (Linux /proc/loadavg; None elsewhere)."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def core_is_free() -> bool:
    """Whether the helper would get a core of its own: this thread plus the helper fit beside whatever else
    runs (least of three reads). The split adds ~30 % CPU (each side rotates its own giants and the babies'
    ancestors), so on a machine with no idle core it is slower than running the step here (measured under a
    load of 5 on 2 cores: 3.3 s against 2.5 s per minionn-mnist-he image)."""
    counts = [c for c in (_runnable() for _ in range(3)) if c is not None]
    return not counts or min(counts) + 1 <= _cores()


# --- choosing a split ------------------------------------------------------------------------------
def side_cost(st, mask: np.ndarray) -> float:
    """Cost of the terms `st.keys[mask]` of a `RotStep` on their own: babies (with ancestors), products,
    additions and each output's Horner giants (as `convpack_eval.rot_partials` runs them)."""
    keys = st.keys[mask]
    if not len(keys):
        return 0.0
    n_rot = 0
    for c in range(st.n_in):
        prev_of = {b: prev for b, prev, _ in st.baby_chain(c)}
        need = {int(b) for b in keys[keys[:, 1] == c, 3]} - {0}
        for b in list(need):
            while prev_of.get(b, 0) != 0 and prev_of[b] not in need:
                b = prev_of[b]
                need.add(b)
        n_rot += len(need)
    for o in np.unique(keys[:, 0]):
        g = keys[keys[:, 0] == o, 2]
        n_rot += int(max(g.max(), 0) - min(g.min(), 0))
    return n_rot * C_ROT + len(keys) * (C_MUL + C_ADD)


def _candidates(st):
    k = st.keys
    for col in (0, 2, 3):  # by output ciphertext, by giant, by baby
        vals = np.unique(k[:, col])
        for v in vals[1:]:
            yield k[:, col] >= v
    # by baby row (a {1, d} chain: the rows a kernel's offsets make), with the giants of each side
    for c in range(st.n_in):
        steps = {s for _, _, s in st.baby_chain(c)}
        if len(steps) == 2:
            d = max(steps)
            for r in np.unique(k[:, 3] // d)[1:]:
                yield (k[:, 3] // d >= r) & (k[:, 1] == c)


def split_rot(st) -> np.ndarray | None:
    """The helper's share of a `RotStep` (a boolean mask over `st.keys`), or None when no cut pays."""
    if len(st.keys) < 2:
        return None
    every = np.ones(len(st.keys), dtype=bool)
    serial = side_cost(st, every)
    best, best_mask = serial, None
    for mask in _candidates(st):
        if mask.all() or not mask.any():
            continue
        n_back = len(np.unique(st.keys[mask, 0]))
        mine = side_cost(st, ~mask) + n_back * (C_MOVE + C_ADD)
        theirs = side_cost(st, mask) + (st.n_in + n_back) * C_MOVE
        cost = max(mine, theirs)
        if cost < best:
            best, best_mask = cost, mask
    return best_mask if best <= MIN_GAIN * serial else None


def diag_view(st, slots: int):
    """A one-ciphertext diagonal step (`latency_plan.DiagStep`) as the `RotStep` whose `rot_partials` performs
    the very same rotations -- babies (same chain, hence the same Galois keys), products, Horner giants by n1 --
    with its plaintexts keyed (0, 0, giant, baby), so that `split_rot` and the helper can share it (the step's
    fold stays with the parent). None when the two would rotate differently (then it is not shared)."""
    from .convpack import RotStep
    used = st.used_j()
    if not used:
        return None
    keys = np.array([(0, 0, j // st.n1, j % st.n1) for j in used], dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    view = RotStep(1, 1, np.asarray(st.out.tiled(slots))[None, :], int(st.n1), keys, empty, empty, empty, empty)
    return view if view.baby_chain(0) == list(st.baby_chain()) else None


# --- the parent's side ------------------------------------------------------------------------------
def _acquire(wait: float, free_core: bool = False):
    """The helper, locked for us, waiting up to `wait` seconds while another job holds it (None: none).
    `free_core`: also wait for a free core (background preparation must not slow the set-up it overlaps)."""
    from .batch_helper import acquire_helper
    deadline = time.monotonic() + wait
    while True:
        h = acquire_helper() if not free_core or core_is_free() else None
        if h is not None or time.monotonic() >= deadline:
            return h
        time.sleep(0.05)


def _send_plan(h, comp, params) -> None:
    """Each split step's share (terms, mask, slot vectors, scale, level) to the helper, once per helper."""
    if comp.par_key is None:
        comp.par_key = uuid.uuid4().hex
    if comp.par_key in h.known:
        return
    for idx, (item, mask, vecs, scale, level) in comp.splits.items():
        st = item.step
        head = {"op": "lat_plan", "plan": comp.par_key, "step": idx, "N": params.N,
                "bits": list(params.coeff_mod_bit_sizes), "n_in": st.n_in, "n_out": st.n_out, "n1": st.n1,
                "slots": comp.plan.slots, "scale": scale, "level": level,
                "key_paths": {str(k): v for k, v in comp.plan.key_paths.items()}}
        h.send(head, np.ascontiguousarray(st.keys, dtype=np.int64).tobytes(), np.packbits(mask).tobytes(),
               np.ascontiguousarray(vecs, dtype=np.float64).tobytes())
        h.reply()
    h.known.add(comp.par_key)
    weakref.finalize(comp, _forget, weakref.ref(h), {"plan": comp.par_key}, comp.par_key)


def _in_background(fn, *args) -> None:
    threading.Thread(target=fn, args=args, daemon=True, name="privinfer-he-par").start()


def warm(comp, params) -> None:
    """Server start: the helper process and the plan's shares, in the background (set-up does not wait)."""
    if comp.splits and enabled():
        _in_background(_warm, comp, params)


def _warm(comp, params) -> None:
    from .batch_helper import _HelperFailed
    h = _acquire(wait=30.0, free_core=True)
    if h is not None:
        try:
            _send_plan(h, comp, params)
        except _HelperFailed:
            pass
        finally:
            h.lock.release()


class ParSession:
    """One connection's use of the helper: its keys there (sent in the background at set-up, when a core is
    free, within 30 s; until they are loaded, queries run in-process), and the compiled plan's shares.

    How long the client's key blobs (~27 MB for minionn-mnist-he) stay in this process: for the connection's
    first preparation attempt only. Once that attempt ends -- the helper loaded them, failed, or was not free
    within 30 s -- or the connection closes, `blobs` is None. Any later preparation (a retry after a busy
    machine, a new helper after one died, keys the helper dropped as least recently used) serializes the
    relinearization and Galois keys again from this connection's context, which holds them for the server's
    own share anyway: a few hundred ms of CPU in the rare case (done before the helper's lock is taken, so other
    connections' queries keep the helper meanwhile), instead of a second copy of the keys for the whole connection."""

    def __init__(self, compiled, ctx, key_blobs: list[bytes], background: bool = True):
        self.compiled, self.ctx, self.blobs = compiled, ctx, key_blobs
        self.key = uuid.uuid4().hex
        self.used = 0  # steps the helper took a share of (tests, stats)
        self.skipped = 0  # split steps run here (helper not ready, switched off, or no free core)
        self.ready = threading.Event()
        self.background = background
        self._preparing = threading.Lock()  # one preparation at a time; a failed one may be retried later
        self.closed = False
        self._tried = time.monotonic()
        if background:
            _in_background(self._prepare)
        else:
            self._prepare()

    def _retry(self) -> None:
        """Not ready (the machine was busy, or a new helper): prepare again in the background, at most
        every RETRY_S seconds, once a core is free."""
        if time.monotonic() - self._tried >= RETRY_S and not self.closed and core_is_free():
            self._tried = time.monotonic()
            _in_background(self._prepare)

    def _prepare(self) -> None:
        if not self._preparing.acquire(blocking=False):
            return
        try:
            self._prepare_locked()
        finally:
            self.blobs = None  # the first attempt is over: later ones serialize the keys again (`_key_blobs`)
            self._tried = time.monotonic()
            self._preparing.release()

    def _key_blobs(self) -> list[bytes] | None:
        """[public key, relinearization keys, Galois keys] for `lat_keys`: the client's blobs as received while
        the first attempt has them, else the keys this connection's context loaded, serialized again (the
        helper reads only the last two; the public key goes as b""). None once the connection is closed."""
        if self.blobs is not None:
            return self.blobs
        ctx = self.ctx
        if self.closed or ctx is None or ctx.relin_keys is None:
            return None
        from .context import dump
        return [b"", dump(ctx.relin_keys), dump(ctx.galois_keys) if ctx.galois_keys is not None else b""]

    def _prepare_locked(self) -> None:
        from .batch_helper import _HelperFailed
        if self.closed:
            return
        # serialize (a retry: ~0.27 s for minionn-mnist-he's keys) *before* taking the helper, whose lock every
        # other connection's query and preparation needs meanwhile; the copy lives until this attempt ends
        blobs = self._key_blobs()
        if blobs is None:
            return
        h = _acquire(wait=30.0, free_core=self.background)
        if h is None:
            return
        try:
            if self.closed:  # the connection ended while we waited: no helper slot for its keys
                return
            _send_plan(h, self.compiled, self.ctx.params)
            h.send({"op": "lat_keys", "key": self.key, "plan": self.compiled.par_key}, *blobs)
            del blobs
            got = h.reply()
            for other in got.get("evicted", ()):  # connections the helper dropped (least recently used)
                h.known.discard(other)
            h.known.add(self.key)
            self.ready.set()
        except (_HelperFailed, ProtocolError):
            pass
        finally:
            h.lock.release()
        if self.closed:  # closed while the keys travelled: forget them now
            self.close()

    def run_rot(self, be, idx: int, st, pts: dict, xs: list) -> list | None:
        """The step's accumulators with the helper's share computed there, or None (helper not ready or
        busy: the caller evaluates the whole step)."""
        from .batch_helper import _HelperFailed, acquire_helper
        from .context import dump, load_into
        from .convpack_eval import rot_partials
        import tenseal.sealapi as seal
        split = self.compiled.splits.get(idx)
        if split is None or not enabled():
            return None
        if not self.ready.is_set() or not core_is_free():
            self.skipped += 1
            if not self.ready.is_set():
                self._retry()
            return None
        h = acquire_helper()
        if h is None:
            return None
        if self.key not in h.known or self.compiled.par_key not in h.known:  # a new helper (the old one died)
            h.lock.release()
            self.ready.clear()
            self._retry()
            return None
        theirs_keys = {tuple(int(v) for v in r) for r in st.keys[split[1]]}
        mine_keys = set(pts) - theirs_keys
        try:
            try:
                h.send({"op": "lat_rot", "key": self.key, "plan": self.compiled.par_key, "step": idx},
                       *[dump(x) for x in xs])
                sent = True
            except _HelperFailed:
                sent = False
            try:
                mine = rot_partials(be, st, pts, xs, only=mine_keys)
            except BaseException:
                if sent:  # its reply would never be read and would answer the next request: replace it
                    h.broken = True
                raise
            got: list[bytes] = []
            theirs = None
            if sent:
                try:
                    h.reply(timeout=REPLY_TIMEOUT, payloads=got)
                    if len(got) == st.n_out:
                        theirs = [load_into(seal.Ciphertext(), self.ctx.seal, b, "helper share") if b else None
                                  for b in got]
                except (_HelperFailed, ProtocolError):  # e.g. it dropped this connection's keys (least recently
                    h.known.discard(self.key)  # used), or a reply that does not load: this share runs here; again
                    self.ready.clear()
            if theirs is None:
                theirs = rot_partials(be, st, pts, xs, only=theirs_keys)
            else:
                self.used += 1
        finally:
            h.lock.release()
        return [a if b is None else b if a is None else be.add(a, b) for a, b in zip(mine, theirs)]

    def close(self) -> None:
        """The connection ended: no further preparation, and the helper forgets this connection's keys."""
        from . import batch_helper
        self.closed, self.blobs = True, None
        self.ready.clear()
        h = batch_helper._helper
        if h is not None and self.key in h.known:
            _forget(weakref.ref(h), {"key": self.key}, self.key)


def _forget(ref, header: dict, known_key: str) -> None:
    h = ref()
    if h is not None and h.alive() and h.lock.acquire(blocking=False):
        try:
            h.send({"op": "lat_forget", **header})
            h.known.discard(known_key)
        except Exception:
            pass
        finally:
            h.lock.release()


__all__ = ["split_rot", "side_cost", "diag_view", "ParSession", "warm", "enabled"]
