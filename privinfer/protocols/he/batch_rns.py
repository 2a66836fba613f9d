"""Low-level machinery of the CryptoNets batch engine (`batch.py`): SEAL handles, raw ciphertext access,
wire (de)serialization, and the exact integer linear maps on RNS residues that replace ~100k SEAL calls.

Why raw residues. A CKKS ciphertext in NTT form is, per RNS prime q, two (or three) length-N vectors of
residues. Multiplying by an *integer* constant w and summing is then exactly `sum_j w_j * c_j mod q`,
coefficient-wise: the same arithmetic SEAL's `multiply_plain` does with a constant plaintext, but a whole
layer at once becomes one integer matrix product per prime, which BLAS runs exactly in float64 once the
60-bit residues are cut into limbs of b bits (every partial sum stays below 2^53). Weights are quantized to
integers with a per-layer factor rho (chosen by the planner) and the ciphertext scale is multiplied by rho,
so no rescale is spent on linear layers.

Raw access. The `tenseal.sealapi` bindings expose no buffer for a ciphertext's data (only a per-element
getter and file-based save/load), so we read SEAL's `Ciphertext` members through ctypes. The layout is
that of SEAL 4.1 in TenSEAL 0.3.18 (pinned by the project) and every view is checked against the API's own
accessors (size, degree, modulus count, scale, first coefficient of each polynomial) before use; a
mismatch raises `ParameterError` instead of touching memory. Nothing here writes outside a buffer SEAL
allocated with exactly the checked shape.
"""
from __future__ import annotations

import ctypes
import math
import os
import struct
import sys
import threading
import weakref
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ...errors import ParameterError, ProtocolError
from .scratch import private_dir
from .seeded import check_header

try:  # pragma: no cover - import guarded so the rest of privinfer works without TenSEAL
    import tenseal as ts
    import tenseal.sealapi as seal
except ImportError:  # pragma: no cover
    ts = None
    seal = None

# ---------------------------------------------------------------------------------------------
# scratch files: the sealapi bindings (de)serialize only through file paths
# ---------------------------------------------------------------------------------------------


def _scratch_path() -> str:
    """A per-thread file in a private (0700) directory, on tmpfs when available."""
    d = private_dir()
    return os.path.join(d, f"{threading.get_ident()}.bin")


def save_bytes(obj) -> bytes:
    """Serialize a SEAL object (Ciphertext, Serializable, ...) to bytes (SEAL format, zstd-compressed)."""
    path = _scratch_path()
    obj.save(path)
    with open(path, "rb") as f:
        return f.read()


def load_ciphertext(kit: "SealKit", blob, what: str, path: str | None = None):
    """Deserialize one wire ciphertext (bytes, or a file at `path` holding them); anything malformed
    becomes a ProtocolError naming `what`."""
    if path is None:
        if not isinstance(blob, (bytes, bytearray, memoryview)):
            raise ProtocolError(f"{what}: expected bytes, got {type(blob).__name__}")
        check_header(bytes(blob[:16]), len(blob), kit.max_blob_bytes, what)
        path = _scratch_path()
        with open(path, "wb") as f:
            f.write(blob)
    else:
        with open(path, "rb") as f:
            head = f.read(16)
        check_header(head, os.path.getsize(path), kit.max_blob_bytes, what)
    ct = seal.Ciphertext()
    try:
        ct.load(kit.sc, path)
    except Exception as e:  # SEAL validates sizes, parms_id and every coefficient against the context
        raise ProtocolError(f"{what}: invalid ciphertext ({e})") from None
    if not ct.is_ntt_form() or ct.size() < 2 or ct.size() > 3:
        raise ProtocolError(f"{what}: ciphertext has size {ct.size()} / is not in NTT form")
    sc = ct.scale
    if not np.isfinite(sc) or sc < 1.0:
        raise ProtocolError(f"{what}: ciphertext scale {sc!r} is not valid")
    return ct


# ---------------------------------------------------------------------------------------------
# SEAL handles for one TenSEAL context
# ---------------------------------------------------------------------------------------------
@dataclass(eq=False)
class SealKit:
    """Everything the engine needs from a `ts.Context`, built once per context object."""
    context: object
    sc: object  # seal::SEALContext
    n: int
    slots: int
    primes: list  # data-level primes q_0..q_{L-1} (the special prime excluded)
    parms_ids: list  # parms_ids[l] = parms_id of the level holding primes[:l] (index 0 unused)
    encoder: object
    evaluator: object
    relin_keys: object = None
    pk_encryptor: object = None
    sk_encryptor: object = None
    decryptor: object = None
    max_blob_bytes: int = 0
    special_bits: float = 0.0
    _buffers: dict = field(default_factory=dict)

    def ks_noise_bits(self, level: int) -> float:
        """log2 of the key-switching (relinearization) noise in slot units at `level`: each RNS digit
        (< q_i) times the key error (sigma 3.2, ~sqrt(N) terms), summed, divided by the special prime."""
        qmax = max(math.log2(q) for q in self.primes[:level])
        return qmax - self.special_bits + math.log2(self.n) + 0.5 * math.log2(level) + 3.0

    @property
    def top_level(self) -> int:
        return len(self.primes)

    def level_of(self, ct) -> int:
        return int(ct.coeff_modulus_size())

    def buffer(self, level: int, size: int):
        """A SEAL-allocated NTT-form ciphertext of the given level and size, reused as a write target."""
        key = (threading.get_ident(), level, size)
        ct = self._buffers.get(key)
        if ct is None:
            if self.pk_encryptor is None:
                raise ParameterError("the context holds no public key; the HE batch engine needs one")
            ct = seal.Ciphertext(self.sc)
            self.pk_encryptor.encrypt_zero(self.parms_ids[level], ct)
            if size == 3:
                out = seal.Ciphertext(self.sc)
                self.evaluator.square(ct, out)
                ct = out
            elif size != 2:
                raise ParameterError(f"no buffer of ciphertext size {size}")
            self._buffers[key] = ct
        return ct


_kits: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_kits_lock = threading.Lock()


def get_kit(context) -> SealKit:
    if ts is None:  # pragma: no cover
        raise ParameterError("TenSEAL is not installed")
    if not isinstance(context, ts.Context):
        raise ParameterError(f"expected a tenseal.Context, got {type(context).__name__}")
    with _kits_lock:
        kit = _kits.get(context)
        if kit is not None:
            return kit
    sc = context.seal_context().data
    first = sc.first_context_data()
    parms = first.parms()
    if getattr(parms.scheme(), "name", None) != "CKKS":
        raise ParameterError("the HE batch engine needs a CKKS context")
    n = int(parms.poly_modulus_degree())
    primes = [int(m.value()) for m in parms.coeff_modulus()]
    if max(q.bit_length() for q in primes) > 61:
        raise ParameterError("RNS primes above 61 bits are not supported")
    ids = [None] * (len(primes) + 1)
    cd = first
    while cd is not None:
        ids[len(cd.parms().coeff_modulus())] = cd.parms_id()
        cd = cd.next_context_data()
    kit = SealKit(context=context, sc=sc, n=n, slots=n // 2, primes=primes, parms_ids=ids,
                  encoder=seal.CKKSEncoder(sc), evaluator=seal.Evaluator(sc))
    key_primes = [int(m.value()) for m in sc.key_context_data().parms().coeff_modulus()]
    kit.special_bits = math.log2(key_primes[-1]) if len(key_primes) > len(primes) else 0.0
    if context.has_relin_keys():
        kit.relin_keys = context.relin_keys().data
    if context.has_public_key():
        kit.pk_encryptor = seal.Encryptor(sc, context.public_key().data)
    if context.has_secret_key():
        sk = context.secret_key().data
        kit.sk_encryptor = seal.Encryptor(sc, sk)
        kit.decryptor = seal.Decryptor(sc, sk)
    # a size-3 ciphertext at the top level, uncompressed, plus header slack
    kit.max_blob_bytes = 3 * n * len(primes) * 8 + 4096
    with _kits_lock:
        _kits[context] = kit
    return kit


# ---------------------------------------------------------------------------------------------
# raw ciphertext data through ctypes (see the module docstring)
# ---------------------------------------------------------------------------------------------
_PYBIND_VALUE_OFFSET = 16  # pybind11 instance: PyObject_HEAD, then the C++ value pointer (simple layout)
# seal::Ciphertext members, in 8-byte words: parms_id[0:4], is_ntt_form, size, poly_modulus_degree,
# coeff_modulus_size, scale, correction_factor, data_.pool_ (2 words), data_.capacity, data_.size, data_.data
_W_SIZE, _W_N, _W_L, _W_SCALE, _W_DSIZE, _W_DPTR = 5, 6, 7, 8, 13, 14
_layout_ok: bool | None = None


def _check_runtime() -> None:
    global _layout_ok
    if _layout_ok is None:
        _layout_ok = (sys.implementation.name == "cpython" and sys.version_info[:2] == (3, 11)
                      and ctypes.sizeof(ctypes.c_void_p) == 8 and ts is not None and ts.__version__ == "0.3.18")
    if not _layout_ok:
        raise ParameterError("raw ciphertext access is only validated for CPython 3.11 + TenSEAL 0.3.18 "
                             f"(found Python {sys.version.split()[0]}, TenSEAL {getattr(ts, '__version__', None)})")


def ct_array(ct) -> np.ndarray:
    """A writable numpy view (size, L, N) of a SEAL ciphertext's residues; valid while `ct` is unchanged."""
    _check_runtime()
    if type(ct).__name__ != "Ciphertext":
        raise ParameterError(f"not a SEAL ciphertext: {type(ct).__name__}")
    ptr = ctypes.c_void_p.from_address(id(ct) + _PYBIND_VALUE_OFFSET).value
    if not ptr:
        raise ParameterError("ciphertext object has no value")
    words = (ctypes.c_uint64 * 15).from_address(ptr)
    size, n, lv = ct.size(), ct.poly_modulus_degree(), ct.coeff_modulus_size()
    scale = struct.unpack("<d", struct.pack("<Q", words[_W_SCALE]))[0]
    if (words[_W_SIZE], words[_W_N], words[_W_L], words[_W_DSIZE]) != (size, n, lv, size * n * lv) \
            or scale != ct.scale or not words[_W_DPTR] or words[_W_DPTR] % 8:
        raise ParameterError("unexpected SEAL ciphertext memory layout; raw access disabled")
    arr = np.ctypeslib.as_array((ctypes.c_uint64 * (size * n * lv)).from_address(words[_W_DPTR]))
    arr = arr.reshape(size, lv, n)
    for k in range(size):
        if int(arr[k, 0, 0]) != ct.data(k):
            raise ParameterError("unexpected SEAL ciphertext memory layout; raw access disabled")
    return arr


def read_ct(ct, out: np.ndarray) -> None:
    """Copy a ciphertext's residues into out[(L, size, N)] (prime-major, as the linear kernels want)."""
    a = ct_array(ct)
    np.copyto(out, a.transpose(1, 0, 2))


def write_ct(ct, src: np.ndarray, scale: float) -> None:
    """Overwrite a SEAL-allocated buffer ciphertext with residues src[(L, size, N)] and set its scale."""
    a = ct_array(ct)
    if a.shape != (src.shape[1], src.shape[0], src.shape[2]):
        raise ParameterError(f"buffer shape {a.shape} does not fit data {src.shape}")
    np.copyto(a, src.transpose(1, 0, 2))
    ct.scale = float(scale)


# ---------------------------------------------------------------------------------------------
# exact integer linear maps on residues
# ---------------------------------------------------------------------------------------------
@dataclass
class IntLinear:
    """y = W x + bias as an exact integer map, W given as blocks that partition the outputs.

    blocks: list of (out_rows, in_sel, Wf) where out_rows is a slice of the *block-ordered* output,
    in_sel a slice or index array of inputs and Wf a float64 integer-valued matrix. `perm[k]` is the true
    output index of block-ordered row k. `l1` bounds sum_j |W_ij| over any row.
    """
    n_in: int
    n_out: int
    blocks: list
    perm: np.ndarray
    l1: float
    bias: np.ndarray  # (n_out,) object array of Python ints (already multiplied by the output scale)
    pool: tuple | None = None  # (C, H, W, kh, kw, sh, sw, ph, pw, OH, OW): all-ones average-pool sum


def limb_bits(l1: float) -> int:
    """Largest limb width b such that every partial sum sum_j |w_j| * (2^b - 1) stays below 2^53."""
    return int(np.floor(53 - np.log2(max(l1, 1.0)) - 1e-9))


_ROWS = 128  # rows per chunk in the elementwise passes: keeps every temporary inside L2


def _reduce_into(out: np.ndarray, G: np.ndarray, t_count: int, b: int, dblk: int, q: int,
                 bias: np.ndarray | None) -> None:
    """out = (sum_t G[:, t*dblk:(t+1)*dblk] * 2^(b t) + bias) mod q, exactly.

    The G blocks hold exact integers (|.| < 2^53). A = the sum mod 2^64 (wrapping int64 arithmetic),
    F = sum / q in float64 (absolute error < 2^-20 given the limb bound), Q = floor(F) is floor(sum / q)
    except in rare near-integer cases off by one, so A - Q q is the true remainder, or in rare cases
    off by +-q: those few entries are found with one comparison and fixed."""
    inv_q = 1.0 / q
    qi = np.int64(q)
    qu = np.uint64(q)
    for r0 in range(0, G.shape[0], _ROWS):
        r1 = min(G.shape[0], r0 + _ROWS)
        g0 = G[r0:r1, :dblk]
        A = g0.astype(np.int64)
        F = g0 * inv_q
        for t in range(1, t_count):
            gt = G[r0:r1, t * dblk:(t + 1) * dblk]
            tmp = gt.astype(np.int64)
            np.left_shift(tmp, b * t, out=tmp)  # wraps: exact mod 2^64
            A += tmp
            F += gt * (float(2 ** (b * t)) * inv_q)
        if bias is not None:
            bb = bias[r0:r1]
            A += bb.astype(np.int64)[:, None]
            F += (bb.astype(np.float64) * inv_q)[:, None]
        np.floor(F, out=F)
        Q = F.astype(np.int64)
        Q *= qi
        A -= Q
        Au = A.view(np.uint64)
        bad = Au >= qu
        if bad.any():
            idx = np.nonzero(bad)
            v = A[idx]
            A[idx] = np.where(v < 0, v + qi, v - qi)
        out[r0:r1] = Au


def _split_limbs(X: np.ndarray, t_count: int, b: int, dest: np.ndarray) -> None:
    """dest[:, t*d:(t+1)*d] = float((X >> b t) & (2^b - 1)) for each limb t (X: uint64 (rows, d))."""
    d = X.shape[1]
    mask = np.uint64((1 << b) - 1)
    for r0 in range(0, X.shape[0], _ROWS):
        r1 = min(X.shape[0], r0 + _ROWS)
        x = X[r0:r1]
        if t_count == 1:
            dest[r0:r1, :d] = x
            continue
        tmp = np.empty_like(x)
        for t in range(t_count):
            if t == 0:
                np.bitwise_and(x, mask, out=tmp)
            else:
                np.right_shift(x, np.uint64(b * t), out=tmp)
                if t < t_count - 1:
                    np.bitwise_and(tmp, mask, out=tmp)
            dest[r0:r1, t * d:(t + 1) * d] = tmp


def _pool_sum(X: np.ndarray, pool: tuple, q: int) -> np.ndarray:
    """All-ones average-pool window sums of residues, reduced mod q (window size * q < 2^64)."""
    C, H, W, kh, kw, sh, sw, ph, pw, OH, OW = pool
    d = X.shape[1]
    x = X.reshape(C, H, W, d)
    if ph or pw:
        xp = np.zeros((C, H + 2 * ph, W + 2 * pw, d), dtype=np.uint64)
        xp[:, ph:ph + H, pw:pw + W] = x
        x = xp
    acc = np.zeros((C, OH, OW, d), dtype=np.uint64)
    for ky in range(kh):
        for kx in range(kw):
            acc += x[:, ky:ky + sh * (OH - 1) + 1:sh, kx:kx + sw * (OW - 1) + 1:sw]
    acc = acc.reshape(C * OH * OW, d)
    # acc < kh*kw*q: subtract floor(acc/q)*q with a float quotient (error at most one step), then fix up
    Q = np.floor(acc.astype(np.float64) * (1.0 / q)).astype(np.uint64)
    A = (acc - Q * np.uint64(q)).view(np.int64)
    A += (A >> 63) & np.int64(q)
    A -= np.where(A >= q, np.int64(q), np.int64(0))
    return A.view(np.uint64)


def apply_linear(op: IntLinear, X: np.ndarray, primes: list, size: int, n: int, threads: int = 2,
                 col_block: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Apply an IntLinear to a ciphertext tensor X (L, n_in, size*N) -> (L, n_out, size*N).

    The bias goes into polynomial 0 only (a constant plaintext in NTT form is the constant everywhere).
    Work is split into (prime, column block) tasks run on `threads` threads; numpy and BLAS release the GIL.
    """
    L, n_in, D = X.shape
    if n_in != op.n_in:
        raise ParameterError(f"linear map expects {op.n_in} inputs, got {n_in}")
    if out is None:
        out = np.empty((L, op.n_out, D), dtype=np.uint64)
    elif out.shape != (L, op.n_out, D) or out.dtype != np.uint64:
        raise ParameterError(f"output array {out.shape} does not fit {(L, op.n_out, D)}")
    bias_res = []
    for q in primes[:L]:
        if op.bias is None:
            bias_res.append(None)
        else:
            r = np.array([int(v) % q for v in op.bias[op.perm]], dtype=np.uint64)
            bias_res.append(r if r.any() else None)
    tasks = []
    if op.pool is not None:
        cb = col_block or 2048
        for li in range(L):
            for c0 in range(0, D, cb):
                tasks.append((li, c0, min(D, c0 + cb)))

        def run(task):
            li, c0, c1 = task
            q = primes[li]
            res = _pool_sum(X[li, :, c0:c1], op.pool, q)
            br = bias_res[li]
            if br is not None and c0 < n:  # pooling has no bias; kept for symmetry
                raise ParameterError("average pooling has no bias")
            out[li, :, c0:c1] = res
    else:
        b_max = limb_bits(op.l1)
        if b_max < 8:
            raise ParameterError(f"integer weights too large for exact float64 products (row L1 {op.l1:.3g})")
        tcounts = [max(1, -(-q.bit_length() // b_max)) for q in primes[:L]]
        bits = [-(-q.bit_length() // t) for q, t in zip(primes[:L], tcounts)]  # even limbs, each <= b_max
        # columns per task: keep the limb matrix near 16 MB and a column block inside one polynomial
        target = col_block or max(256, min(n, int(16e6 / (8 * max(n_in, 1) * max(tcounts)))))
        cb = 1 << int(np.floor(np.log2(target)))
        cb = min(cb, n)
        for li in range(L):
            for c0 in range(0, D, cb):
                tasks.append((li, c0, min(D, c0 + cb)))
        inv_perm_needed = not np.array_equal(op.perm, np.arange(op.n_out))

        def run(task):
            li, c0, c1 = task
            q, T, b = primes[li], tcounts[li], bits[li]
            d = c1 - c0
            Xs = _scratch("Xs", (n_in, T * d), np.float64)
            _split_limbs(X[li, :, c0:c1], T, b, Xs)
            G = _scratch("G", (op.n_out, T * d), np.float64)
            for rows, insel, Wf in op.blocks:
                if isinstance(insel, slice):
                    np.matmul(Wf, Xs[insel], out=G[rows])
                else:
                    src = _scratch("take", (len(insel), T * d), np.float64)
                    np.take(Xs, insel, axis=0, out=src)
                    np.matmul(Wf, src, out=G[rows])
            br = bias_res[li] if c0 < n else None  # bias only on polynomial 0 (columns [0, N))
            res = out[li, :, c0:c1] if not inv_perm_needed else _scratch("res", (op.n_out, d), np.uint64)
            _reduce_into(res, G, T, b, d, q, br)
            if not inv_perm_needed:
                return
            out[li, op.perm, c0:c1] = res
    run_tasks(run, tasks, threads)
    return out


_tls = threading.local()
_executors: dict = {}
_exec_lock = threading.Lock()


def _scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """A per-thread reusable work array (fresh large allocations cost page faults every time)."""
    cache = getattr(_tls, "arrays", None)
    if cache is None:
        cache = _tls.arrays = {}
    size = int(np.prod(shape))
    buf = cache.get((name, np.dtype(dtype).str))
    if buf is None or buf.size < size:
        buf = cache[(name, np.dtype(dtype).str)] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def run_tasks(fn, tasks, threads: int) -> None:
    """Run fn over tasks on `threads` long-lived threads, BLAS pinned to one thread each (OpenBLAS's own
    threads spin-wait and collapse on small products or a busy machine)."""
    with _blas_single_thread():
        if threads <= 1 or len(tasks) <= 1:
            for t in tasks:
                fn(t)
            return
        with _exec_lock:
            ex = _executors.get(threads)
            if ex is None:
                ex = _executors[threads] = ThreadPoolExecutor(threads, thread_name_prefix="pi-he-batch")
        for f in [ex.submit(fn, t) for t in tasks]:
            f.result()


class _blas_single_thread:
    """Limit BLAS to one thread while our own threads split the work (restored afterwards)."""

    def __enter__(self):
        try:
            from threadpoolctl import threadpool_limits
            self._ctl = threadpool_limits(limits=1, user_api="blas")
        except Exception:  # pragma: no cover - threadpoolctl missing: BLAS oversubscribes, still correct
            self._ctl = None
        return self

    def __exit__(self, *exc):
        if self._ctl is not None:
            self._ctl.restore_original_limits()
        return False
