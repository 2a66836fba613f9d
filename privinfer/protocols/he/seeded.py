"""Seeded (secret-key) CKKS ciphertexts for uploads, at the lowest level the network needs, and their
checked loading on the server.

Why: a fresh CKKS ciphertext is a pair (c0, c1) where, under symmetric encryption, c1 = a is uniformly
random. SEAL can replace `a` by the PRNG seed that generated it (`Encryptor.encrypt_symmetric` returns a
`Serializable` whose `save` writes c0 and the seed): the upload is half the bytes, and encryption is cheaper
too (no public-key multiplication, no second error). Encoding the plaintext at the parms_id of the level the
server's plan starts from (fewer RNS primes than the top of the chain) shrinks it again by the ratio of the
prime counts, and the server skips the modulus switches it would otherwise do on arrival.

Soundness: symmetric encryption needs the secret key, so only the key owner -- the client -- can encrypt this
way. That is exactly the upload direction: the client encrypts its own input. The seed is public (it travels
with c0), which is fine: `a` is public in any CKKS ciphertext. Never use this for anything the server
encrypts (it does not hold the secret key; its encryptions are public-key ones, e.g. re-randomization).

Loading: nothing from the network is unpickled. The bytes must be one SEAL serialization (checked header:
magic, header size, total size equal to the length, a known compression mode) no larger than a ciphertext
of the expected level could be, and SEAL's own validation (parms_id known to the context, every coefficient
reduced) must accept it; the level (parms_id), the size (2 polynomials), NTT form and scale are then checked
against what the plan expects. Any failure is a `ProtocolError` naming the ciphertext. The sealapi bindings
(de)serialize only through file paths: one file per thread, created exclusively (O_EXCL | O_NOFOLLOW)
with an unpredictable name in this process's private 0700 scratch directory (`scratch.py`), then reused.
"""
from __future__ import annotations

import os
import secrets
import struct
import threading

import numpy as np

from ...errors import ParameterError, ProtocolError
from .scratch import private_dir

try:  # pragma: no cover - guarded so that privinfer imports without TenSEAL
    import tenseal.sealapi as seal
except ImportError:  # pragma: no cover
    seal = None

SEAL_MAGIC = 0xA15E
HEADER_BYTES = 16
SLACK_BYTES = 4096  # header, parms_id, scale, seed and compression framing


# ---------------------------------------------------------------------------------------------
# scratch files
# ---------------------------------------------------------------------------------------------
_local = threading.local()


class _ScratchFile:
    """A thread's scratch file; deleted when the thread ends (its thread-local storage is freed) or the
    object is dropped, so that short-lived connection threads leave nothing behind."""

    def __init__(self, path: str):
        self.path = path

    def __del__(self):
        try:
            os.unlink(self.path)
        except (OSError, TypeError):  # TypeError: at interpreter shutdown
            pass


def _thread_path() -> str:
    """This thread's scratch file: an unpredictable name, created exclusively (O_EXCL | O_NOFOLLOW) in the
    private directory once, then reused. (A fresh file per call costs ~3 ms of tmpfs page allocation per
    ciphertext, more than the encryption's serialization itself.)"""
    d = private_dir()
    f = getattr(_local, "file", None)
    if f is None or os.path.dirname(f.path) != d or not os.path.isfile(f.path):
        for _ in range(8):
            path = os.path.join(d, "s-" + secrets.token_hex(12))
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
            except FileExistsError:  # pragma: no cover - 96 random bits
                continue
            os.close(fd)
            break
        else:  # pragma: no cover
            raise ProtocolError("cannot create a scratch file")
        f = _local.file = _ScratchFile(path)
    return f.path


def save_bytes(obj) -> bytes:
    """Serialize a SEAL object or Serializable (anything with `.save(path)`) to bytes."""
    path = _thread_path()
    obj.save(path)
    with open(path, "rb") as f:
        return f.read()


# ---------------------------------------------------------------------------------------------
# levels
# ---------------------------------------------------------------------------------------------
def parms_id_for(seal_context, n_primes: int):
    """The parms_id of the data level that holds `n_primes` RNS primes (1 .. top)."""
    cd = seal_context.first_context_data()
    while cd is not None:
        if len(cd.parms().coeff_modulus()) == int(n_primes):
            return cd.parms_id()
        cd = cd.next_context_data()
    raise ParameterError(f"no level with {n_primes} primes in this context")


def n_primes_of(seal_context, parms_id) -> int:
    cd = seal_context.get_context_data(parms_id)
    if cd is None:
        raise ProtocolError("ciphertext parms_id is not a level of this context")
    return len(cd.parms().coeff_modulus())


def max_bytes(n: int, n_primes: int, seeded: bool = True) -> int:
    """The largest honest serialization of a fresh ciphertext at a level of `n_primes` primes (uncompressed
    64-bit coefficients; a seeded one carries one polynomial and a seed)."""
    return (1 if seeded else 2) * int(n) * int(n_primes) * 8 + SLACK_BYTES


def check_header(head: bytes, length: int, limit: int, what: str) -> None:
    """Refuse anything that is not a single SEAL object of plausible size before SEAL parses it."""
    if length < HEADER_BYTES or length > limit:
        raise ProtocolError(f"{what}: {length} bytes is not a ciphertext for these parameters (limit {limit})")
    magic, hsize, _maj, _min, compr, _res, total = struct.unpack_from("<HBBBBHQ", bytes(head[:HEADER_BYTES]), 0)
    if magic != SEAL_MAGIC or hsize != HEADER_BYTES or total != length or compr > 2:
        raise ProtocolError(f"{what}: not a SEAL ciphertext (bad header)")


# ---------------------------------------------------------------------------------------------
# client: encrypt
# ---------------------------------------------------------------------------------------------
class SeededEncryptor:
    """Client-side: encode real vectors at a chosen level and encrypt them with the secret key, seeded.

    `seal_context`: a sealapi SEALContext; `secret_key`: a sealapi SecretKey (so this exists only where the
    secret key does). `encrypt` is safe to call from several threads (SEAL's Encryptor and CKKSEncoder are
    const on use)."""

    def __init__(self, seal_context, secret_key, encoder=None):
        if secret_key is None:
            raise ParameterError("seeded encryption needs the secret key: only the client encrypts this way")
        self.sc = seal_context
        self.encoder = encoder if encoder is not None else seal.CKKSEncoder(seal_context)
        self.encryptor = seal.Encryptor(seal_context, secret_key)
        self.slots = int(self.encoder.slot_count())

    def encrypt(self, values, scale: float, n_primes: int | None = None, parms_id=None) -> bytes:
        """Serialized seeded ciphertext of `values` (real, at most `slots`; zero-padded) at scale `scale`,
        at the level with `n_primes` primes (default: the top of the chain) or the given parms_id."""
        vals = np.asarray(values, dtype=np.float64).reshape(-1)
        if vals.size > self.slots:
            raise ParameterError(f"{vals.size} values do not fit {self.slots} slots")
        if not np.all(np.isfinite(vals)):
            raise ParameterError("values to encrypt must be finite")
        if parms_id is None:
            parms_id = self.sc.first_parms_id() if n_primes is None else parms_id_for(self.sc, n_primes)
        pt = seal.Plaintext()
        self.encoder.encode(vals.tolist(), parms_id, float(scale), pt)
        return save_bytes(self.encryptor.encrypt_symmetric(pt))


# ---------------------------------------------------------------------------------------------
# server: load
# ---------------------------------------------------------------------------------------------
def load(seal_context, blob, *, n_primes: int, scale: float | None = None, what: str = "ciphertext",
         seeded: bool = True):
    """Deserialize one uploaded ciphertext, which must be fresh (2 polynomials, NTT form) at the level of
    `n_primes` primes and, when given, exactly at `scale`. `seeded=True` caps the size at what a seeded
    ciphertext takes (a full one is refused as oversize). Raises ProtocolError on anything else."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ProtocolError(f"{what}: expected bytes, got {type(blob).__name__}")
    n = int(seal_context.first_context_data().parms().poly_modulus_degree())
    check_header(bytes(blob[:HEADER_BYTES]), len(blob), max_bytes(n, n_primes, seeded), what)
    path = _thread_path()
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0))
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    ct = seal.Ciphertext()
    try:
        ct.load(seal_context, path)
    except Exception as e:  # SEAL validates sizes, parms_id and every coefficient against the context
        raise ProtocolError(f"{what}: invalid ciphertext ({e})") from None
    if ct.size() != 2 or not ct.is_ntt_form():
        raise ProtocolError(f"{what}: not a fresh ciphertext (size {ct.size()}, NTT form {ct.is_ntt_form()})")
    got = n_primes_of(seal_context, ct.parms_id())
    if got != int(n_primes):
        raise ProtocolError(f"{what}: at a level of {got} primes, the plan expects {n_primes}")
    sc = ct.scale
    if not np.isfinite(sc) or sc < 1.0 or (scale is not None and sc != float(scale)):
        raise ProtocolError(f"{what}: scale {sc!r} is not the expected {scale!r}")
    return ct
