"""Authenticating the `ss` dealer: a pre-shared-key challenge-response that also derives the PRG keys.

Why it exists: whoever holds party 1's dealer PRG key can strip the masks off the openings the server
receives and read the client's input (and party 0's key likewise exposes the weights). CrypTen's dealer
simply *sends* each party its key over the plain gloo link, and the dealer is whatever process joined
the rendezvous the server chose, so a server could run its own "dealer" unnoticed. Here each party
instead authenticates a third-party dealer with a secret it was given out of band, and its PRG key is
*derived* from that secret and the handshake, so it never travels at all and only that party and the
dealer can know it.

Handshake (one per party and session; the client's runs through the server, which only relays):

    party -> dealer   {rank, key_id, rendezvous, nonce_p}                 nonce_p: 32 fresh random bytes
    dealer -> party   {nonce_d, mac_d = HMAC(k, "dealer" || T)}           nonce_d: 32 fresh random bytes
    party -> dealer   {mac_p = HMAC(k, "party" || T)}
    both              prg_key = HMAC(k, "prg" || T)

    T = canonical JSON of (label, rank, key_id, rendezvous, nonce_p, nonce_d);  HMAC = HMAC-SHA-256.

* The party checks `mac_d` before it joins the CrypTen group, so a dealer without the party's secret
  (an impostor, or the server itself) is a `DealerAuthError` before any share moves; the dealer checks
  `mac_p` likewise. Fresh nonces on both sides make every transcript new (no replay); the distinct
  labels prevent reflection; `rendezvous` in T binds the keys to the CrypTen group the party will join,
  so a relaying server cannot splice the client's handshake into another session.
* The secrets are per role: the dealer's operator gives the server one secret and the client(s)
  another (`privinfer dealer --server-secret S --client-secret C`). The guarantee rests on the server
  not knowing the client's secret. `key_id` (a SHA-256 fingerprint of the secret) tells the dealer
  which of its client secrets a party uses.
* Everything is Python's `hmac`/`hashlib`/`secrets`: no home-made primitive. A public-key variant
  (Ed25519 + X25519 from the `cryptography` package) would spare the out-of-band secret per client; it
  is not installed in this environment and is not implemented.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

from ...errors import PrivinferError, ProtocolError

LABEL = "privinfer-ss-dealer-auth-v1"
NONCE_BYTES = 32
MIN_SECRET_BYTES = 16  # 128 bits


class DealerAuthError(ProtocolError):
    """The dealer (or a party) failed authentication, or a pinned dealer is not the one in use."""


class DealerChoiceError(PrivinferError):
    """An `ss` server was started without saying whose dealer it uses."""


def load_secret(spec) -> bytes:
    """A dealer secret: raw bytes (Python API) or the path of a file holding it as hex (as written by
    `privinfer dealer --new-secret`). At least 128 bits."""
    if isinstance(spec, (bytes, bytearray)):
        raw = bytes(spec)
    elif isinstance(spec, (str, os.PathLike)):
        p = Path(spec)
        if not p.is_file():
            raise PrivinferError(f"dealer secret file {spec} does not exist")
        text = p.read_text(errors="replace").strip()
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raise PrivinferError(f"dealer secret file {spec} must hold hex digits only") from None
    else:
        raise PrivinferError(f"a dealer secret must be a file path or bytes, got {type(spec).__name__}")
    if len(raw) < MIN_SECRET_BYTES:
        raise PrivinferError(f"dealer secret has {len(raw) * 8} bits; at least {MIN_SECRET_BYTES * 8} are needed")
    return raw


def new_secret_file(path: str) -> str:
    """Write a fresh 256-bit secret (hex) to `path`, readable by its owner only; return its key id."""
    raw = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(raw.hex() + "\n")
    return key_id(raw)


def key_id(secret: bytes) -> str:
    """A public fingerprint naming a secret (it reveals nothing usable about a 128+-bit secret)."""
    return hashlib.sha256(b"privinfer-ss-key-id" + secret).hexdigest()[:16]


def _transcript(rank: int, kid: str, rendezvous: str, nonce_p: str, nonce_d: str) -> bytes:
    return json.dumps([LABEL, rank, kid, rendezvous, nonce_p, nonce_d], separators=(",", ":")).encode()


def _mac(secret: bytes, label: bytes, t: bytes) -> str:
    return hmac.new(secret, label + b"|" + t, hashlib.sha256).hexdigest()


def _hex(msg: dict, name: str, nbytes: int) -> str:
    v = msg.get(name) if isinstance(msg, dict) else None
    if not isinstance(v, str) or len(v) != 2 * nbytes:
        raise DealerAuthError(f"dealer handshake: missing or malformed {name!r}")
    try:
        bytes.fromhex(v)
    except ValueError:
        raise DealerAuthError(f"dealer handshake: {name!r} is not hex") from None
    return v


class PartyHandshake:
    """A party's side: `hello()`, then `finish(reply)` -> (confirmation for the dealer, PRG key)."""

    def __init__(self, rank: int, secret: bytes, rendezvous: str):
        self.rank, self.secret, self.rendezvous = int(rank), secret, rendezvous
        self.kid = key_id(secret)
        self.nonce = secrets.token_hex(NONCE_BYTES)

    def hello(self) -> dict:
        return {"rank": self.rank, "key_id": self.kid, "rendezvous": self.rendezvous, "nonce_p": self.nonce}

    def finish(self, reply: dict) -> tuple[dict, bytes]:
        nonce_d = _hex(reply, "nonce_d", NONCE_BYTES)
        mac_d = _hex(reply, "mac_d", 32)
        t = _transcript(self.rank, self.kid, self.rendezvous, self.nonce, nonce_d)
        if not hmac.compare_digest(mac_d, _mac(self.secret, b"dealer", t)):
            raise DealerAuthError("the dealer failed authentication: it does not hold the secret this party "
                                  "pinned (an impostor dealer, or the wrong secret file)")
        return {"mac_p": _mac(self.secret, b"party", t)}, hmac.digest(self.secret, b"prg|" + t, "sha256")


class DealerHandshake:
    """The dealer's side for one party: `answer(hello)`, then `confirm(msg)` -> the party's PRG key."""

    def __init__(self, secrets_by_id: dict[str, bytes], rank: int, rendezvous: str):
        self.table, self.rank, self.rendezvous = secrets_by_id, int(rank), rendezvous

    def answer(self, hello: dict) -> dict:
        if not isinstance(hello, dict) or hello.get("rank") != self.rank or hello.get("rendezvous") != self.rendezvous:
            raise DealerAuthError(f"dealer handshake: expected party {self.rank} of rendezvous {self.rendezvous}")
        kid = hello.get("key_id")
        self.secret = self.table.get(kid) if isinstance(kid, str) else None
        if self.secret is None:
            raise DealerAuthError(f"the dealer knows no {'server' if self.rank == 0 else 'client'} secret "
                                  f"with key id {str(kid)[:32]!r}")
        nonce_p = _hex(hello, "nonce_p", NONCE_BYTES)
        nonce_d = secrets.token_hex(NONCE_BYTES)
        self.t = _transcript(self.rank, kid, self.rendezvous, nonce_p, nonce_d)
        return {"nonce_d": nonce_d, "mac_d": _mac(self.secret, b"dealer", self.t)}

    def confirm(self, msg: dict) -> bytes:
        mac_p = _hex(msg, "mac_p", 32)
        if not hmac.compare_digest(mac_p, _mac(self.secret, b"party", self.t)):
            raise DealerAuthError(f"party {self.rank} failed authentication to the dealer")
        return hmac.digest(self.secret, b"prg|" + self.t, "sha256")


def secret_table(specs) -> dict[str, bytes]:
    """key id -> secret for a list of secret files (or bytes)."""
    out = {}
    for s in specs or []:
        raw = load_secret(s)
        out[key_id(raw)] = raw
    return out


def client_authenticate(ch, kind, rendezvous: str, secret: bytes | None, timing: dict | None = None) -> bytes | None:
    """The client's side, before any CrypTen process starts. `kind` is what the server says it uses.

    A client that pinned a dealer (`secret`) refuses a server-run one; against a third-party dealer it
    runs the handshake through the server and returns its PRG key (None: local dealer, keys sent by it).
    `timing` gets `dealer_auth_s` (hello -> verified answer: the authentication proper) and
    `dealer_ready_s` (confirmation -> the dealer's session process started).
    """
    import time
    timing = {} if timing is None else timing
    if kind == "local":
        if secret is not None:
            raise DealerAuthError("this client pinned a third-party dealer (client_secret), but the server "
                                  "runs its own dealer, which would hold the client's PRG key")
        return None
    if kind != "third-party":
        raise ProtocolError(f"server named no known kind of dealer ({str(kind)[:40]!r})")
    if secret is None:
        raise DealerAuthError("the server uses a third-party dealer: pass client_secret=FILE, the secret "
                              "the dealer's operator gave you, so that this client can authenticate it")
    t0 = time.perf_counter()
    hs = PartyHandshake(1, secret, rendezvous)
    ch.send_json({"dealer_hello": hs.hello()})
    reply = ch.recv_json()
    if "dealer_error" in reply:
        raise DealerAuthError(f"the dealer refused this client: {str(reply['dealer_error'])[:300]}")
    confirm, key = hs.finish(reply.get("dealer"))
    t1 = time.perf_counter()
    timing["dealer_auth_s"] = t1 - t0
    ch.send_json({"dealer_confirm": confirm})
    done = ch.recv_json()
    if "dealer_error" in done:
        raise DealerAuthError(f"the dealer refused this client: {str(done['dealer_error'])[:300]}")
    if not isinstance(done.get("dealer"), dict) or done["dealer"].get("ok") != "ready":
        raise ProtocolError("the dealer did not confirm the handshake")
    timing["dealer_ready_s"] = time.perf_counter() - t1
    return key
