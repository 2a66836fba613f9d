"""Low-level machinery of the CryptoNets batch engine (`batch.py`): SEAL handles, raw ciphertext access and
wire (de)serialization; the exact integer linear maps on RNS residues that replace ~100k SEAL calls live in
`batch_linear.py` (re-exported here).

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
from dataclasses import dataclass, field

import numpy as np

from ...errors import ParameterError, ProtocolError
from .batch_linear import IntLinear, apply_linear, limb_bits, run_tasks  # noqa: F401 (re-exported)
from .batch_linear import _pool_sum, _reduce_into  # noqa: F401 (tests)
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
