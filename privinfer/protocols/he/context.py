"""A CKKS context on TenSEAL's `sealapi` (raw SEAL): keys, encoder, evaluator, byte (de)serialization.

Shared by both packings. The *client* context (`CKKSContext.create`) owns the secret key; the *server* context
(`CKKSContext.for_params` + `load_public`) holds only the public key, the relinearization key and the Galois
keys for the rotation steps its plan uses, all sent by the client as seeded (half-size), compressed SEAL
serializations. The secret key never leaves `create`'s object (there is no method that serializes it except
`secret_key_bytes`, used by tests to prove it is absent from the traffic).

Attributes the batch engine may use: `params` (HEParams), `seal` (SEALContext), `encoder` (CKKSEncoder),
`evaluator` (Evaluator), `encryptor` (public-key Encryptor; None before keys), `decryptor` (client only),
`relin_keys`, `galois_keys`, `public_key`, `secret_key` (client only), `scale` (2^scale_bits),
`parms_ids` (top level first), `slots`; helpers `ct_to_bytes`, `ct_from_bytes`, `encrypt(values) -> bytes`,
`decrypt(blob) -> np.ndarray`.
"""
from __future__ import annotations

import os
import threading

import numpy as np
import tenseal.sealapi as seal

from ...errors import ParameterError, ProtocolError
from typing import TYPE_CHECKING

from .scratch import private_dir

if TYPE_CHECKING:  # annotations only: the HE helper process imports this module without torch
    from .ckks_params import HEParams

_scratch_lock = threading.Lock()
_counter = iter(range(1 << 62))


def _private_dir() -> str:
    """This process's private scratch directory (see `scratch`): every file in it is created with
    O_EXCL | O_NOFOLLOW besides."""
    return private_dir()


def _tmp_file() -> str:
    """A fresh file, created exclusively (never an existing path or a symlink) in the private directory."""
    with _scratch_lock:
        n = next(_counter)
    path = os.path.join(_private_dir(), f"{threading.get_ident()}-{n}")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    os.close(fd)
    return path


def dump(obj) -> bytes:
    """Serialize any sealapi object (or Serializable) that has `.save(path)`."""
    path = _tmp_file()
    try:
        obj.save(path)
        with open(path, "rb") as f:
            return f.read()
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def load_into(obj, seal_context, data: bytes, what: str):
    """Load `data` into a fresh sealapi object; any SEAL complaint becomes a ProtocolError."""
    if not isinstance(data, (bytes, bytearray)) or len(data) < 16:
        raise ProtocolError(f"{what}: {len(data) if isinstance(data, (bytes, bytearray)) else type(data).__name__} "
                            f"bytes is not a SEAL serialization")
    path = _tmp_file()
    try:
        fd = os.open(path, os.O_WRONLY | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            obj.load(seal_context, path)
        except Exception as e:  # SEAL raises ValueError/RuntimeError/std::logic_error wrappers
            raise ProtocolError(f"{what} rejected: {e} (tampered bytes, or made under other parameters)") from None
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
    return obj


def galois_elt(step: int, N: int) -> int:
    """SEAL's Galois element for a left rotation by `step` slots (generator 3)."""
    slots = N // 2
    step %= slots
    if step == 0:
        raise ParameterError("rotation by 0 needs no key")
    return pow(3, step, 2 * N)


def _seeded_or_full(make, cls):
    """The seeded (half-size) serializable key when sealapi binds it, else the full key object."""
    try:
        return make()
    except TypeError:
        obj = cls()
        make(obj)
        return obj


def seal_context(scheme, N: int, coeff_bits, plain_modulus: int | None = None):
    """A SEALContext at 128-bit security (CKKS, or BFV with `plain_modulus`), or a typed error saying why not."""
    parms = seal.EncryptionParameters(scheme)
    parms.set_poly_modulus_degree(N)
    try:
        parms.set_coeff_modulus(seal.CoeffModulus.Create(N, list(coeff_bits)))
    except Exception as e:
        raise ParameterError(f"SEAL cannot build primes {list(coeff_bits)} for N={N}: {e}") from None
    if plain_modulus is not None:
        parms.set_plain_modulus(seal.Modulus(plain_modulus))
    ctx = seal.SEALContext(parms, True, seal.SEC_LEVEL_TYPE.TC128)
    if not ctx.parameters_set():
        raise ParameterError(f"SEAL refused the parameters: {ctx.parameters_error_message()}")
    return ctx


def levels(ctx):
    """(parms_id, coefficient primes) of every level of `ctx`, top first."""
    out, cd = [], ctx.first_context_data()
    while cd is not None:
        out.append((cd.parms_id(), [m.value() for m in cd.parms().coeff_modulus()]))
        cd = cd.next_context_data()
    return out


class CKKSContext:
    def __init__(self, params: HEParams):
        params.validate()
        self.params = params
        self.slots = params.N // 2
        self.scale = params.scale
        self.seal = seal_context(seal.SCHEME_TYPE.CKKS, params.N, params.coeff_mod_bit_sizes)
        self.encoder = seal.CKKSEncoder(self.seal)
        self.evaluator = seal.Evaluator(self.seal)
        # levels, top first: parms_id and the prime a rescale at that level drops
        chain = levels(self.seal)
        self.parms_ids = [pid for pid, _ in chain]
        self.drop_primes = [float(primes[-1]) for _, primes in chain]
        self.secret_key = self.public_key = self.relin_keys = self.galois_keys = None
        self.encryptor = self.decryptor = self._sym_encryptor = None
        self.rotation_steps: tuple[int, ...] = ()

    # --- construction ---------------------------------------------------------------------------
    @classmethod
    def for_params(cls, params: HEParams) -> "CKKSContext":
        """A key-less context (server side, before the client's keys arrive; plaintext encoding)."""
        return cls(params)

    @classmethod
    def create(cls, params: HEParams, rotation_steps=()) -> "CKKSContext":
        """The client's context: a fresh secret key, public key, relin key, Galois keys for `rotation_steps`."""
        ctx = cls(params)
        kg = seal.KeyGenerator(ctx.seal)
        ctx.secret_key = kg.secret_key()
        ctx.public_key = seal.PublicKey()
        kg.create_public_key(ctx.public_key)
        ctx.rotation_steps = tuple(sorted({int(s) % ctx.slots for s in rotation_steps} - {0}))
        # serializable (seeded) forms for the wire, loaded back locally so the client can also evaluate
        ctx._kg = kg
        ctx.encryptor = seal.Encryptor(ctx.seal, ctx.public_key)
        ctx._sym_encryptor = seal.Encryptor(ctx.seal, ctx.secret_key)
        ctx.decryptor = seal.Decryptor(ctx.seal, ctx.secret_key)
        return ctx

    def public_blobs(self) -> list[bytes]:
        """[public key, relin keys, galois keys (only the plan's steps)] as seeded SEAL serializations."""
        if self.secret_key is None:
            raise ParameterError("only the key owner can export public keys")
        kg = self._kg
        pk = dump(self.public_key)  # (sealapi does not bind the seeded Serializable<PublicKey>)
        rk = dump(_seeded_or_full(kg.create_relin_keys, seal.RelinKeys))
        elts = [galois_elt(s, self.params.N) for s in self.rotation_steps]
        gk = dump(kg.create_galois_keys(elts)) if elts else b""
        # the client evaluates nothing, but keep local copies loadable for tests / local evaluation
        return [pk, rk, gk]

    def load_public(self, blobs: list[bytes], rotation_steps) -> None:
        """Server: load the client's public material and check it covers the plan's rotations."""
        if not isinstance(blobs, list) or len(blobs) != 3:
            raise ProtocolError(f"expected 3 key blobs (public, relin, galois), got {len(blobs) if isinstance(blobs, list) else blobs!r}")
        self.public_key = load_into(seal.PublicKey(), self.seal, blobs[0], "public key")
        self.relin_keys = load_into(seal.RelinKeys(), self.seal, blobs[1], "relinearization keys")
        steps = sorted({int(s) % self.slots for s in rotation_steps} - {0})
        if steps:
            self.galois_keys = load_into(seal.GaloisKeys(), self.seal, blobs[2], "Galois keys")
            missing = [s for s in steps if not self.galois_keys.has_key(galois_elt(s, self.params.N))]
            if missing:
                raise ProtocolError(f"Galois keys lack rotation steps {missing}")
        elif blobs[2]:
            raise ProtocolError("unexpected Galois keys: this plan uses no rotation")
        self.rotation_steps = tuple(steps)
        self.encryptor = seal.Encryptor(self.seal, self.public_key)

    def secret_key_bytes(self) -> bytes:
        """The serialized secret key: for tests asserting it never crosses the wire."""
        if self.secret_key is None:
            raise ParameterError("this context holds no secret key")
        return dump(self.secret_key)

    # --- ciphertexts ----------------------------------------------------------------------------
    def ct_to_bytes(self, ct) -> bytes:
        return dump(ct)

    def ct_from_bytes(self, data: bytes, what: str = "ciphertext", level: int | None = None):
        ct = load_into(seal.Ciphertext(), self.seal, data, what)
        if ct.size() != 2:
            raise ProtocolError(f"{what} has {ct.size()} polynomials, expected 2")
        if level is not None and ct.parms_id() != self.parms_ids[level]:
            raise ProtocolError(f"{what} is at the wrong level for this plan")
        return ct

    def encode(self, values, scale: float, level: int = 0):
        pt = seal.Plaintext()
        vals = np.asarray(values)
        if np.iscomplexobj(vals):
            self.encoder.encode([complex(v) for v in vals], self.parms_ids[level], float(scale), pt)
        else:
            self.encoder.encode(vals.astype(np.float64).tolist(), self.parms_ids[level], float(scale), pt)
        return pt

    def encrypt(self, values, scale: float | None = None) -> bytes:
        """Client: encrypt a real vector (<= slots) with the secret key (seeded, half-size) and serialize it."""
        if self._sym_encryptor is None:
            raise ParameterError("only the key owner encrypts symmetrically")
        pt = self.encode(values, self.scale if scale is None else scale, 0)
        return dump(self._sym_encryptor.encrypt_symmetric(pt))

    def decrypt_ct(self, ct) -> np.ndarray:
        pt = seal.Plaintext()
        self.decryptor.decrypt(ct, pt)
        return np.asarray(self.encoder.decode_double(pt))

    def decrypt(self, blob: bytes, what: str = "result") -> np.ndarray:
        if self.decryptor is None:
            raise ParameterError("only the key owner decrypts")
        return self.decrypt_ct(self.ct_from_bytes(blob, what))
