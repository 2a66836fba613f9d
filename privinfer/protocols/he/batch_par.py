"""Per-unit SEAL loops of the batch engine, and the shared tmpfs arrays they work on.

TenSEAL's `sealapi` bindings hold the GIL inside every SEAL call (measured: two threads run SEAL no faster
than one), so the loops that must call SEAL once per unit -- loading the input ciphertexts, and each Poly
layer's rescale/relinearize/product -- run on unit ranges, half of them in a helper *process*
(`batch_helper`), on arrays shared through files in the engine's private tmpfs directory (np.memmap,
pooled between queries: `SharedArrays`).
"""
from __future__ import annotations

import math
import os
import threading
import uuid

import numpy as np

from ...errors import ParameterError, ProtocolError
from . import batch_rns as rns
from .batch_rns import seal

KS_MARGIN = 40.0  # bits between the scale and the key-switching noise where a poly input is relinearized


# ---------------------------------------------------------------------------------------------
# the unit loops (run by the parent and by the helper)
# ---------------------------------------------------------------------------------------------
def load_units(kit, blobs, X: np.ndarray, lo: int, hi: int, drops: int, expect: tuple,
               paths: list | None = None) -> float:
    """Load input ciphertexts lo..hi-1, check them against the first one's (parms_id, scale), rescale
    `drops` times and copy their residues into X[:, i]; returns the resulting scale. The ciphertexts
    are blobs[i], or files paths[i - lo]."""
    ev = kit.evaluator
    pid, scale = expect
    out_scale = None
    for i in range(lo, hi):
        what = f"input ciphertext {i}"
        ct = (rns.load_ciphertext(kit, None, what, path=paths[i - lo]) if paths is not None
              else rns.load_ciphertext(kit, blobs[i], what))
        if ct.size() != 2 or list(ct.parms_id()) != pid or ct.scale != scale:
            raise ProtocolError(f"input ciphertext {i} differs from the first in size, level or scale")
        for _ in range(drops):
            ev.rescale_to_next_inplace(ct)
        rns.read_ct(ct, X[:, i])
        out_scale = ct.scale
    return out_scale


def poly_units(kit, X: np.ndarray, Y: np.ndarray, lo: int, hi: int, S: float, drops: int,
               coeffs: tuple, poly_rho: float | None) -> float:
    """Evaluate a Poly layer on units lo..hi-1 of X (L, units, size, N) into Y; returns the output scale.

    Per unit: drop `drops` primes by rescaling, relinearizing a 3-part input on the way (as late as the
    key-switching noise allows: it must stay KS_MARGIN bits below the scale), then the polynomial."""
    ev = kit.evaluator
    level, size = X.shape[0], X.shape[2]
    buf = kit.buffer(level, size)
    if size == 3 and kit.relin_keys is None:
        raise ParameterError("the server context needs relinearization keys")
    tmp = [seal.Ciphertext(kit.sc), seal.Ciphertext(kit.sc)]
    out = seal.Ciphertext(kit.sc)
    d = len(coeffs) - 1
    cache: dict = {}
    out_scale = None
    # a 3-part input is relinearized at the lowest level where the key-switching noise stays 2^-KS_MARGIN
    # below the scale (cheaper than at the top level, where it would be safest), rescales before that
    # one work on 3 parts
    relin_after = 0
    if size == 3:
        s_bits = math.log2(S)
        while relin_after < drops:
            s_next = s_bits - math.log2(kit.primes[level - 1 - relin_after])
            if s_next - kit.ks_noise_bits(level - 1 - relin_after) < KS_MARGIN:
                break
            s_bits = s_next
            relin_after += 1
    for j in range(lo, hi):
        rns.write_ct(buf, X[:, j], S)
        cur, t = buf, 0
        for r in range(drops):
            if size == 3 and r == relin_after:
                ev.relinearize(cur, kit.relin_keys, tmp[t])
                cur, t = tmp[t], 1 - t
            ev.rescale_to_next(cur, tmp[t])
            cur, t = tmp[t], 1 - t
        if cur.size() == 3:
            ev.relinearize(cur, kit.relin_keys, tmp[t])
            cur, t = tmp[t], 1 - t
        res = poly_unit(kit, cur, coeffs, d, poly_rho, out, cache)
        if res.size() != Y.shape[2] or kit.level_of(res) != Y.shape[0]:
            raise ParameterError("poly result shape differs from the plan")  # pragma: no cover
        if out_scale is None:
            out_scale = res.scale
        rns.read_ct(res, Y[:, j])
    return out_scale


def poly_unit(kit, x, coeffs, d, poly_rho, out, cache):
    """sum_k c_k x^k for one ciphertext, all terms at x's level and common scale T = S^d * poly_rho.

    Powers are products at the same level (no rescale inside the layer); lower terms are brought to the
    scale T by multiplying with the integer round(c_k * T / S^k) (precise: T / S^k is huge)."""
    ev = kit.evaluator
    S = x.scale
    rho = poly_rho or 1.0
    if d == 2 and coeffs[0] == 0.0 and coeffs[1] == 0.0 and coeffs[2] == 1.0 and rho == 1.0:
        ev.square(x, out)
        out.scale = S * S
        return out
    T = S ** d * rho
    pid = x.parms_id()
    powers = {1: x}
    p2 = seal.Ciphertext(kit.sc)
    ev.square(x, p2)
    p2.scale = S * S
    powers[2] = p2
    for k in range(3, d + 1):
        prev = powers[k - 1]
        if prev.size() > 2:
            if kit.relin_keys is None:
                raise ParameterError("the server context needs relinearization keys")
            ev.relinearize_inplace(prev, kit.relin_keys)
        pk = seal.Ciphertext(kit.sc)
        ev.multiply(prev, x, pk)
        pk.scale = S ** k
        powers[k] = pk
    acc = None
    for k in range(d, 0, -1):
        c = coeffs[k]
        if c == 0.0:
            continue
        if k == d and c == 1.0 and rho == 1.0:
            term = powers[k]  # a fresh product, never the caller's x (d >= 2)
        else:
            key = (k, tuple(pid), T, S)
            pt = cache.get(key)
            if pt is None:
                pt = seal.Plaintext()
                kit.encoder.encode(float(c), pid, T / S ** k, pt)
                cache[key] = pt
            term = seal.Ciphertext(kit.sc)
            ev.multiply_plain(powers[k], pt, term)
        term.scale = T
        if acc is None:
            acc = term
        else:
            ev.add_inplace(acc, term)  # SEAL grows acc to the larger size if needed
            acc.scale = T
    if coeffs[0] != 0.0:
        key = (0, tuple(pid), T, S)
        pt = cache.get(key)
        if pt is None:
            pt = seal.Plaintext()
            kit.encoder.encode(float(coeffs[0]), pid, T, pt)
            cache[key] = pt
        ev.add_plain_inplace(acc, pt)
    return acc


# ---------------------------------------------------------------------------------------------
# shared arrays
# ---------------------------------------------------------------------------------------------
class _Pool:
    """Mapped tmpfs buffers kept from one evaluation to the next. Mapping fresh memory costs ~0.5 s of
    page faults per GB, and an evaluation at N=8192 touches ~2 GB, so reuse matters. At most `cap` bytes
    stay pooled (PRIVINFER_HE_BATCH_POOL_MB, default 25% of RAM up to 6 GB; 0 disables pooling)."""

    ALIGN = 1 << 21

    def __init__(self):
        env = os.environ.get("PRIVINFER_HE_BATCH_POOL_MB")
        if env is not None:
            self.cap = int(float(env) * (1 << 20))
        else:
            try:
                ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
            except (ValueError, OSError):
                ram = 8 << 30
            self.cap = min(6 << 30, ram // 4)
        self.free: list = []  # (nbytes, path, raw uint8 memmap)
        self.lock = threading.Lock()
        self.dropped: list[str] = []  # unlinked paths the helper may still have mapped

    def take(self, nbytes: int):
        with self.lock:
            best = None
            for k, (size, _, _) in enumerate(self.free):
                if nbytes <= size <= 2 * nbytes + self.ALIGN and (best is None or size < self.free[best][0]):
                    best = k
            if best is not None:
                return self.free.pop(best)
        size = -(-max(nbytes, 1) // self.ALIGN) * self.ALIGN
        path = os.path.join(os.path.dirname(rns._scratch_path()), f"arr-{uuid.uuid4().hex}.bin")
        with open(path, "wb") as f:
            f.truncate(size)
        return size, path, np.memmap(path, dtype=np.uint8, mode="r+", shape=(size,))

    def give(self, item) -> None:
        with self.lock:
            self.free.append(item)
            total = sum(it[0] for it in self.free)
            while self.free and total > self.cap:
                size, path, _ = self.free.pop(0)  # oldest first
                total -= size
                _unlink(path)
                self.dropped.append(path)


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


_pool = _Pool()


class SharedArrays:
    """One evaluation's lease on pooled file-backed arrays (shareable with the helper by path), plus the
    input blobs written as files for the helper. `close` returns the arrays and deletes the blob files."""

    def __init__(self):
        self.base = os.path.dirname(rns._scratch_path())
        self.leased: dict = {}  # data address -> pool item
        self.blob_paths: list[str] = []

    def array(self, shape, dtype=np.uint64) -> np.ndarray:
        shape = tuple(int(v) for v in shape)
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        item = _pool.take(nbytes)
        arr = item[2][:nbytes].view(dtype).reshape(shape)
        self.leased[arr.__array_interface__["data"][0]] = item
        return arr

    def release(self, arr: np.ndarray) -> None:
        item = self.leased.pop(arr.__array_interface__["data"][0], None)
        if item is not None:
            _pool.give(item)

    def file(self, data: bytes) -> str:
        path = os.path.join(self.base, f"blob-{uuid.uuid4().hex}.bin")
        self.blob_paths.append(path)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def spec(self, arr: np.ndarray) -> dict:
        item = self.leased[arr.__array_interface__["data"][0]]
        return {"path": item[1], "size": item[0], "shape": list(arr.shape), "dtype": str(arr.dtype)}

    def close(self) -> None:
        for item in self.leased.values():
            _pool.give(item)
        self.leased.clear()
        for p in self.blob_paths:
            _unlink(p)
        self.blob_paths.clear()


_maps: dict = {}  # helper side: path -> raw memmap, kept so that pages stay mapped between jobs


def _open(spec: dict) -> np.ndarray:
    raw = _maps.get(spec["path"])
    if raw is None:
        raw = _maps[spec["path"]] = np.memmap(spec["path"], dtype=np.uint8, mode="r+", shape=(int(spec["size"]),))
    dtype = np.dtype(spec["dtype"])
    nbytes = int(np.prod(spec["shape"])) * dtype.itemsize
    return raw[:nbytes].view(dtype).reshape(tuple(spec["shape"]))


__all__ = ["SharedArrays", "load_units", "poly_units", "poly_unit"]
