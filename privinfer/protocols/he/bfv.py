"""BFV through TenSEAL's `sealapi`: integer slots mod a batching prime t, for masks that hide perfectly.

Why BFV next to CKKS: a hybrid plan hands an HE result to the 2PC as additive shares. GAZELLE masks the
result with m uniform mod the plaintext modulus t: (y + m) mod t is then uniform whatever y is (perfect
hiding), which CKKS cannot offer at these parameters (see `protocols/convert`). BFV computes exactly mod t,
so linear layers run on integers: inputs at 2^FRAC_BITS (CrypTen's fixed point), weights at 2^w.

Parameters (`BFVParams`): N = 8192 (slots: 2 rows of 4096; `rotate_rows` rotates both rows alike, so the
latency/convpack plans run with 4096 slots and the value is duplicated in both rows), coefficient modulus
60+60+60 bits and a 30-bit special prime (210 <= 218 bits: SEAL's 128-bit bound for N = 8192, enforced by
SEALContext at TC128), t a batching prime (t = 1 mod 2N) sized per segment from the sound value bound.

Circuit privacy (what the client's secret key could otherwise read off a result): the server
  1. adds a fresh public-key encryption of zero (c1 becomes pseudorandom under RLWE, so it no longer is a
     weight-dependent combination of the client's own c1's);
  2. floods the noise: adds to c0 an integer polynomial E, every coefficient uniform in [-2^beta, 2^beta],
     beta as large as decryption allows (`flood_bits`). Against a worst-case bound 2^noise on the evaluation
     error (`noise_bits`: the fresh error, plus the key-switching error of the baby-step rotations before the
     products, times N t per product, times the products summed) the statistical distance between the
     decryption errors for any two weight sets is at most N 2^noise / 2^beta: `stat_bits` states it per
     segment, and the session reports it (STAT_BITS = 40 is what a formal claim wants: with the CKKS packing
     plans' baby steps before the products, GAZELLE's split of minionn-mnist got 17 and 8.5 bits on its
     convolutions, since the 30-bit special prime makes each rotation's error ~2^49 and the products multiply
     it; the lane packing, `bfv_pack.py`, rotates only after the products: 44.9-51.9 bits). The client is assumed
     semi-honest: a ciphertext with larger noise than an honest encryption is outside this analysis;
  3. switches to the lowest level at which the flooded result still decrypts (`out_level`), which shrinks
     the reply (one 60-bit prime: 128 KB per ciphertext).
Masks and flooding noise come from the OS CSPRNG (`os.urandom`), rejection-sampled: exactly uniform.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import numpy as np
import tenseal.sealapi as seal

from ...errors import ParameterError, ProtocolError
from .context import _seeded_or_full, _tmp_file, dump, galois_elt, levels, load_into, seal_context

N_DEFAULT = 8192
COEFF_BITS = (60, 60, 60, 30)  # data primes, then the special (key-switching) prime
FRAC_BITS = 16                 # input scale: CrypTen's fixed point, so ring values are slot integers as they are
STAT_BITS = 40                 # circuit privacy a formal claim wants (the achieved bits are reported)
FRESH_BITS = math.log2(6 * 3.2 * (2 * N_DEFAULT + 1))  # |e u + e1 + e2 s| <= 6 sigma (2N + 1): 18.3 bits
MAX_T_BITS = 41
SLACK_BYTES = 4096


@dataclass(frozen=True)
class BFVParams:
    N: int
    coeff_bits: tuple
    t: int

    @property
    def t_bits(self) -> int:
        return int(self.t).bit_length()

    @property
    def slots(self) -> int:
        """Slots per row: the cyclic length `rotate_rows` acts on (plans are built for this many)."""
        return self.N // 2

    def to_json(self) -> dict:
        return {"scheme": "bfv", "N": self.N, "coeff_bits": list(self.coeff_bits), "t": int(self.t)}

    @classmethod
    def from_json(cls, d: dict) -> "BFVParams":
        if d.get("scheme") != "bfv":
            raise ProtocolError("not BFV parameters")
        p = cls(int(d["N"]), tuple(int(b) for b in d["coeff_bits"]), int(d["t"]))
        p.validate()
        return p

    def validate(self) -> None:
        if self.N != N_DEFAULT or tuple(self.coeff_bits) != COEFF_BITS:
            raise ParameterError(f"BFV parameters N={self.N}, {self.coeff_bits} are not the audited set "
                                 f"N={N_DEFAULT}, {COEFF_BITS} (128-bit security)")
        if (not 2 ** 20 <= self.t < 2 ** MAX_T_BITS or (self.t - 1) % (2 * self.N)
                or not seal.Modulus(int(self.t)).is_prime()):
            raise ParameterError(f"plaintext modulus {self.t} is not a batching prime in [2^20, 2^{MAX_T_BITS})")


def choose_params(value_bound: float) -> BFVParams:
    """The smallest batching prime t with |values| <= value_bound inside (-t/2, t/2), at the audited N, q."""
    need = max(20, int(math.ceil(math.log2(2.0 * value_bound + 3.0))) + 1)
    if need > MAX_T_BITS:
        raise ParameterError(f"values up to {value_bound:.3g} need a {need}-bit plaintext modulus; BFV here "
                             f"allows {MAX_T_BITS} bits (noise flooding must fit the modulus): lower the weight scale")
    mods = {m.value() for m in seal.CoeffModulus.Create(N_DEFAULT, list(COEFF_BITS))}
    for bits in range(need, MAX_T_BITS + 1):
        for t in (m.value() for m in seal.PlainModulus.Batching(N_DEFAULT, [bits] * 2)):
            if t not in mods:
                return BFVParams(N_DEFAULT, COEFF_BITS, int(t))
    raise ParameterError("no batching prime found")  # pragma: no cover


def uniform_mod(t: int, n: int) -> np.ndarray:
    """n integers exactly uniform in [0, t): OS randomness, rejection sampling (no modulo bias)."""
    bits = int(t - 1).bit_length()
    accept = int(t) / 2.0 ** bits  # > 1/2: draw what the acceptance rate needs (plus slack), not twice n
    out = np.empty(0, dtype=np.uint64)
    while len(out) < n:
        draw = int((n - len(out)) / accept * 1.05) + 16
        raw = np.frombuffer(os.urandom(8 * draw), dtype=np.uint64) >> np.uint64(64 - bits)
        out = np.concatenate([out, raw[raw < np.uint64(t)]])
    return out[:n].astype(np.int64)


def _flood_limbs(bits: int, n: int) -> np.ndarray:
    """(limbs, n) uint64 words of n integers U uniform in [0, 2^(bits+1)) (OS randomness): U = sum_k w_k 2^(64 k).
    The flood is E = U - 2^bits, uniform in [-2^bits, 2^bits)."""
    limbs = -(-(bits + 1) // 64)
    raw = np.frombuffer(os.urandom(8 * limbs * n), dtype=np.uint64).reshape(limbs, n).copy()
    top = (bits + 1) - 64 * (limbs - 1)  # bits used of the highest limb
    if top < 64:
        raw[-1] >>= np.uint64(64 - top)
    return raw


_M32, _S32 = np.uint64(0xFFFFFFFF), np.uint64(32)


def _mulhi(a: np.ndarray, b: np.uint64) -> np.ndarray:
    """The upper 64 bits of the 128-bit products a * b (uint64), from 32-bit halves."""
    a0, a1, b0, b1 = a & _M32, a >> _S32, b & _M32, b >> _S32
    p00, p01, p10, p11 = a0 * b0, a0 * b1, a1 * b0, a1 * b1
    mid = (p00 >> _S32) + (p01 & _M32) + (p10 & _M32)
    return p11 + (p01 >> _S32) + (p10 >> _S32) + (mid >> _S32)


def _reduce_once(x: np.ndarray, q: np.uint64) -> np.ndarray:
    return np.where(x >= q, x - q, x)


def _mulmod(a: np.ndarray, c: int, q: int) -> np.ndarray:
    """a * c mod q, exactly, for uint64 a < q, a constant c < q and q < 2^62 (Shoup's multiplication: with
    c' = floor(c 2^64 / q), a c - floor(a c' / 2^64) q lies in [0, 2q); uint64 products wrap mod 2^64)."""
    r = a * np.uint64(c) - _mulhi(a, np.uint64((c << 64) // q)) * np.uint64(q)
    return _reduce_once(r, np.uint64(q))


def flood_residues(limbs: np.ndarray, bits: int, primes) -> list[np.ndarray]:
    """E = sum_k w_k 2^(64 k) - 2^bits modulo each prime (uint64), in numpy words (no Python integers:
    ~0.1 ms per prime for N = 8192, against ~3 ms through Python ints). Exact: tests compare with Python ints."""
    out = []
    for q in (int(p) for p in primes):
        if not 1 < q < 1 << 62:
            raise ParameterError(f"prime {q} outside (1, 2^62)")
        Q = np.uint64(q)
        acc = limbs[0] % Q
        for k in range(1, len(limbs)):
            acc = _reduce_once(acc + _mulmod(limbs[k] % Q, pow(2, 64 * k, q), q), Q)
        out.append(_reduce_once(acc + np.uint64((q - pow(2, bits, q)) % q), Q))
    return out


class BFVContext:
    """Keys, encoder and evaluator of one BFV parameter set. The client's (`create`) owns the secret key; the
    server's (`for_params` + `load_public`) holds the public key and the Galois keys of its plan's steps."""

    def __init__(self, params: BFVParams):
        params.validate()
        self.params, self.t, self.N, self.slots = params, int(params.t), params.N, params.slots
        self.seal = seal_context(seal.SCHEME_TYPE.BFV, params.N, params.coeff_bits, params.t)
        self.encoder = seal.BatchEncoder(self.seal)
        self.evaluator = seal.Evaluator(self.seal)
        chain = levels(self.seal)
        self.parms_ids = [pid for pid, _ in chain]
        self.level_primes = [primes for _, primes in chain]
        self.secret_key = self.public_key = self.galois_keys = None
        self.encryptor = self.decryptor = self._sym = None
        self.rotation_steps: tuple = ()

    @classmethod
    def for_params(cls, params: BFVParams) -> "BFVContext":
        return cls(params)

    @classmethod
    def create(cls, params: BFVParams, rotation_steps=()) -> "BFVContext":
        ctx = cls(params)
        kg = seal.KeyGenerator(ctx.seal)
        ctx._kg, ctx.secret_key = kg, kg.secret_key()
        ctx.public_key = seal.PublicKey()
        kg.create_public_key(ctx.public_key)
        ctx.rotation_steps = tuple(sorted({int(s) % ctx.slots for s in rotation_steps} - {0}))
        ctx.encryptor = seal.Encryptor(ctx.seal, ctx.public_key)
        ctx._sym = seal.Encryptor(ctx.seal, ctx.secret_key)
        ctx.decryptor = seal.Decryptor(ctx.seal, ctx.secret_key)
        return ctx

    def keyed(self) -> "BFVContext":
        """A per-connection view sharing this context's SEAL objects, without keys."""
        view = object.__new__(type(self))
        view.__dict__.update(self.__dict__)
        view.secret_key = view.public_key = view.galois_keys = None
        view.encryptor = view.decryptor = view._sym = None
        return view

    def public_blobs(self) -> list[bytes]:
        """[public key, Galois keys of the plan's steps only (seeded)]."""
        if self.secret_key is None:
            raise ParameterError("only the key owner can export public keys")
        elts = [galois_elt(s, self.N) for s in self.rotation_steps]
        gk = dump(_seeded_or_full(lambda *a: self._kg.create_galois_keys(elts, *a), seal.GaloisKeys)) if elts else b""
        return [dump(self.public_key), gk]

    def load_public(self, blobs: list[bytes], rotation_steps) -> None:
        if not isinstance(blobs, list) or len(blobs) != 2:
            raise ProtocolError("expected 2 BFV key blobs (public, galois)")
        self.public_key = load_into(seal.PublicKey(), self.seal, blobs[0], "BFV public key")
        steps = sorted({int(s) % self.slots for s in rotation_steps} - {0})
        if steps:
            self.galois_keys = load_into(seal.GaloisKeys(), self.seal, blobs[1], "BFV Galois keys")
            missing = [s for s in steps if not self.galois_keys.has_key(galois_elt(s, self.N))]
            if missing:
                raise ProtocolError(f"BFV Galois keys lack rotation steps {missing}")
        elif blobs[1]:
            raise ProtocolError("unexpected Galois keys: this plan uses no rotation")
        self.rotation_steps = tuple(steps)
        self.encryptor = seal.Encryptor(self.seal, self.public_key)

    # --- plaintexts ---------------------------------------------------------------------------------
    def encode(self, values) -> "seal.Plaintext":
        """Integers (any sign) mod t into the slots: a row-length vector is duplicated in both rows."""
        v = np.asarray(values)
        if v.shape[-1] == self.slots:
            v = np.concatenate([v, v])
        if v.shape != (self.N,):
            raise ParameterError(f"{v.shape} values for {self.N} BFV slots")
        r = np.mod(np.rint(v).astype(np.int64), self.t) if v.dtype.kind == "f" else np.mod(v.astype(np.int64), self.t)
        pt = seal.Plaintext()
        self.encoder.encode(r.astype(np.uint64).tolist(), pt)
        return pt

    def decode(self, pt) -> np.ndarray:
        return np.asarray(self.encoder.decode_uint64(pt), dtype=np.int64)

    # --- ciphertexts --------------------------------------------------------------------------------
    def max_ct_bytes(self, seeded: bool = False) -> int:
        return (1 if seeded else 2) * self.N * (len(COEFF_BITS) - 1) * 8 + SLACK_BYTES

    def ct_to_bytes(self, ct) -> bytes:
        return dump(ct)

    def ct_from_bytes(self, data: bytes, what: str = "BFV ciphertext", level: int | None = None):
        if not isinstance(data, (bytes, bytearray)) or len(data) > self.max_ct_bytes():
            raise ProtocolError(f"{what}: not a ciphertext of these parameters (size)")
        ct = load_into(seal.Ciphertext(), self.seal, bytes(data), what)
        if ct.size() != 2 or ct.is_ntt_form():
            raise ProtocolError(f"{what}: expected a fresh 2-polynomial BFV ciphertext")
        if level is not None and ct.parms_id() != self.parms_ids[level]:
            raise ProtocolError(f"{what} is at the wrong level")
        return ct

    def encrypt(self, values) -> bytes:
        """Client: seeded symmetric encryption (half the upload) of integer slot values."""
        if self._sym is None:
            raise ParameterError("only the key owner encrypts symmetrically")
        return dump(self._sym.encrypt_symmetric(self.encode(values)))

    def decrypt(self, blob: bytes, what: str = "BFV result") -> np.ndarray:
        """All N slot values in [0, t)."""
        if self.decryptor is None:
            raise ParameterError("only the key owner decrypts")
        pt = seal.Plaintext()
        self.decryptor.decrypt(self.ct_from_bytes(blob, what), pt)
        return self.decode(pt)

    def centered(self, v: np.ndarray) -> np.ndarray:
        v = np.asarray(v, dtype=np.int64) % self.t
        return np.where(v > self.t // 2, v - self.t, v)

    # --- circuit privacy ----------------------------------------------------------------------------
    def flood_bits(self, noise_bits: float = 0.0) -> int:
        """beta: the largest flood that still decrypts at the top level with 4 bits of margin (t 2^beta / q <=
        2^-4). As large as possible: the statistical distance it buys is N 2^noise_bits / 2^beta."""
        top = sum(math.log2(q) for q in self.level_primes[0])
        return int(math.floor(top - math.log2(self.t) - 4))

    def stat_bits(self, noise_bits: float) -> float:
        """Circuit privacy bought by the flood: -log2 of the statistical distance bound N 2^noise / 2^beta."""
        return round(self.flood_bits() - noise_bits - math.log2(self.N), 1)

    def out_level(self, noise_bits: float = 0.0) -> int:
        """The lowest level at which the flooded result still decrypts: flood (scaled) + the rounding of the
        switch, (t / q') (N + 1) / 2, below 1/8."""
        beta = self.flood_bits()
        top = sum(math.log2(q) for q in self.level_primes[0])
        best = 0
        for lvl, primes in enumerate(self.level_primes):
            lq = sum(math.log2(q) for q in primes)
            v = 2.0 ** (beta + math.log2(self.t) - top) + 2.0 ** (math.log2(self.t) - lq + math.log2(self.N + 1) - 1)
            if v < 2.0 ** -3:
                best = lvl
        return best

    def pad(self, noise_bits: float, level: int = 0):
        """The input-independent part of `finish`: a fresh public-key encryption of zero plus the flood
        (E, 0), E uniform in [-2^beta, 2^beta] per coefficient, at `level`. A server may make pads before the
        result they finish exists (while it waits); each pad finishes ONE ciphertext and is then dropped.

        The flood is added as a ciphertext (E, 0): a zero-filled ciphertext of the right shape whose coefficient
        array is overwritten with E mod each prime (sealapi binds no writable view of a ciphertext's data,
        but `DynArray.load` fills one from an uncompressed SEAL serialization)."""
        zero = seal.Ciphertext()
        self.encryptor.encrypt_zero(self.parms_ids[level], zero)
        primes = self.level_primes[level]
        beta = self.flood_bits(noise_bits)
        rns = flood_residues(_flood_limbs(beta, self.N), beta, primes)
        flood = seal.Ciphertext(self.seal, self.parms_ids[level], 2)
        flood.resize(self.seal, self.parms_ids[level], 2)  # zero-filled, coefficient form
        _overwrite(flood.dyn_array(), np.concatenate(rns + [np.zeros(len(primes) * self.N, dtype=np.uint64)]))
        self.evaluator.add_inplace(zero, flood)
        return zero

    def finish(self, ct, noise_bits: float, level: int, pad=None):
        """Re-randomize (fresh encryption of zero), flood c0 (both: `pad`, made here unless given), switch to
        `level`. In place; returns ct."""
        if pad is None:
            pad = self.pad(noise_bits, self.parms_ids.index(ct.parms_id()))
        elif pad.parms_id() != ct.parms_id():
            raise ParameterError("a finishing pad at another level than the result")
        self.evaluator.add_inplace(ct, pad)
        self.evaluator.mod_switch_to_inplace(ct, self.parms_ids[level])
        return ct


def _header_prefix() -> bytes:
    """magic, header size and SEAL version of this SEAL build's serializations (from a real one)."""
    global _PREFIX
    if _PREFIX is None:
        _PREFIX = dump(seal.Plaintext())[:5]
    return _PREFIX


_PREFIX = None


def _overwrite(arr, values: np.ndarray) -> None:
    """Fill a SEAL DynArray<uint64> (same length) from `values`: an uncompressed serialization, loaded."""
    if arr.size() != len(values):
        raise ParameterError(f"{len(values)} coefficients for an array of {arr.size()}")
    body = struct.pack("<Q", len(values)) + np.ascontiguousarray(values, dtype="<u8").tobytes()
    blob = _header_prefix() + bytes([0]) + struct.pack("<HQ", 0, 16 + len(body)) + body
    path = _tmp_file()
    try:
        with open(path, "wb") as f:
            f.write(blob)
        arr.load(path)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def key_switch_bits(N: int = N_DEFAULT) -> float:
    """log2 of a worst-case bound on the error one key switch (rotation) adds: sum over the k data primes of
    N |c_i| |e_i| / P with |c_i| < q_i, |e_i| <= 6 sigma, P the special prime (plus the division's rounding)."""
    k = len(COEFF_BITS) - 1
    return math.log2(k * N * 6 * 3.2 * 2.0 ** (max(COEFF_BITS[:-1]) - COEFF_BITS[-1]) + N)


def noise_bits(t: int, n_terms: int, depth: int = 0, N: int = N_DEFAULT) -> float:
    """log2 of a worst-case bound on the absolute decryption error of a segment's result: its inputs carry the
    fresh error plus `depth` key switches (the longest chain of baby-step rotations before the products),
    each product multiplies by at most N t, `n_terms` products are summed, and one more bit covers the key
    switches of the rotations after the products (each far below a product's error)."""
    fresh = math.log2(2.0 ** FRESH_BITS + depth * 2.0 ** key_switch_bits(N))
    return fresh + math.log2(N) + math.log2(t) + math.log2(max(1, n_terms)) + 1.0
