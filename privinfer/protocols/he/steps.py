"""The `he` protocol's steps in the engine (`protocols/engine.py`): encrypt, HE segment, decrypt.

Why a module of its own: these classes are what runs CKKS in every plan -- `he` alone (encrypt, segment,
decrypt) and every HE segment of a `hybrid` plan (the same `HESegment`; hybrid adds the conversions to and
from shares in `protocols/convert.py`). Wire format, per query (latency packing):

    HEUpload     client: BLOBS [seeded ciphertexts, n_ct per image]   server: seeded.load (level, scale checked)
    HESegment    server: the compiled plan on each image's ciphertexts (no traffic)
    HEDownload   server: re-randomize + flood, BLOBS [one per image]  client: decrypt the logit slots

Batch packing (`batch.py`, slot per image) has its own three steps over the same kinds: the upload streams
the groups (`batch_stream.py`), the segment runs on the executor, the download floods each result.
"""
from __future__ import annotations

import numpy as np

from ...errors import ProtocolError, ShapeError
from ...transport import Channel
from ..engine import Kind, Step, Value
from . import executor as hex_
from . import seeded
from .latency import SealBackend, client_vectors


class HEUpload(Step):
    """plain@client -> cipher: the client encrypts each image in the plan's input layout (secret key, seeded:
    half the bytes); the server loads them, fresh, at the top level and the plan's input scale."""
    accepts, produces = Kind.PLAIN_CLIENT, Kind.CIPHER

    def __init__(self, ctx, plan, scale: float, client: bool, n_primes: int | None = None):
        self.ctx, self.plan, self.scale, self.client, self.n_primes = ctx, plan, float(scale), client, n_primes
        self._enc = seeded.SeededEncryptor(ctx.seal, ctx.secret_key, ctx.encoder) if client else None

    def run(self, ch: Channel, value: Value) -> Value:
        if self.client:
            ch.send_blobs([self._enc.encrypt(v, self.scale) for xi in value.data for v in client_vectors(self.plan, xi)])
            return value.to(Kind.CIPHER)
        B, n_ct = value.batch, self.plan.input.n_ct
        blobs = ch.recv_blobs()
        if len(blobs) != B * n_ct:
            raise ShapeError(f"expected {B} x {n_ct} ciphertexts (batch x per-image), got {len(blobs)}")
        # seeded, fresh, at the top level and the plan's input scale (seeded.load checks all, typed errors)
        cts = [[seeded.load(self.ctx.seal, b, n_primes=self.n_primes, scale=self.scale, what="input ciphertext")
                for b in blobs[i * n_ct:(i + 1) * n_ct]] for i in range(B)]
        return value.to(Kind.CIPHER, cts)


class HESegment(Step):
    """cipher -> cipher: layers [start, stop) as one compiled CKKS plan, per image, on the server. The client
    has nothing to do. The same class runs `he` alone and each HE segment of a hybrid plan."""
    accepts = produces = Kind.CIPHER

    def __init__(self, compiled=None, ctx=None, start: int = 0, stop: int | None = None, par=None):
        self.compiled, self.ctx, self.start, self.stop = compiled, ctx, start, stop
        self.par = par  # latency_par.ParSession: a share of the split steps in the helper process
        self.client = compiled is None

    def run(self, ch: Channel, value: Value) -> Value:
        if self.client:
            return value
        backend = SealBackend(self.ctx)
        return value.to(Kind.CIPHER, [self.compiled.evaluate(cts, backend=backend, par=self.par)
                                      for cts in value.data])

    def describe(self) -> str:
        return f"HESegment[{self.start}:{self.stop}]"


class HEDownload(Step):
    """cipher -> plain@client: the server re-randomizes each result and floods it (`flood_std`, the circuit-
    privacy policy) and sends it; the client decrypts the output slots."""
    accepts, produces = Kind.CIPHER, Kind.PLAIN_CLIENT

    def __init__(self, ctx, client: bool, flood_std: float = 0.0, out_slots=None, reshape=None):
        self.ctx, self.client, self.flood_std, self.out_slots = ctx, client, flood_std, out_slots
        self.reshape = reshape  # client: flat outputs -> (B, *shape) for a segment that is not the last

    def run(self, ch: Channel, value: Value) -> Value:
        if not self.client:
            from .result_noise import rerandomize
            ch.send_blobs([self.ctx.ct_to_bytes(rerandomize(self.ctx, ct, self.flood_std)) for ct in value.data])
            return value.to(Kind.PLAIN_CLIENT)
        res = ch.recv_blobs()
        if len(res) != value.batch:
            raise ProtocolError(f"expected {value.batch} result ciphertexts, got {len(res)}")
        out = np.stack([self.ctx.decrypt(r)[self.out_slots] for r in res])
        return value.to(Kind.PLAIN_CLIENT, out if self.reshape is None else self.reshape(out))


# --- batch packing -----------------------------------------------------------------------------------

class HEBatchUpload(Step):
    """plain@client -> cipher, batch packing: the client streams its groups (or one frame, for an older
    server); the server's value is a reader that loads them as they arrive."""
    accepts, produces = Kind.PLAIN_CLIENT, Kind.CIPHER

    def __init__(self, side, client: bool):
        self.side, self.client = side, client

    def run(self, ch: Channel, value: Value) -> Value:
        s = self.side
        if self.client:
            if s.streamed:
                s.stream.send_stream(ch, s.ctx, value.data, s.params.slots)
            else:
                ch.send_blobs(hex_.encrypt_groups(s.ctx, value.data, s.params.slots))
            return value.to(Kind.CIPHER)
        n_in = int(np.prod(s.proto.graph.input_shape))
        return value.to(Kind.CIPHER, s.stream.ChunkReader(ch, s.chunks, hex_.n_groups(value.batch, s.params.slots) * n_in))


class HEBatchSegment(Step):
    """cipher -> cipher, batch packing: the whole graph on the executor; every slot past the images the
    client sent is masked (a one-image query returns one answer)."""
    accepts = produces = Kind.CIPHER

    def __init__(self, side, client: bool):
        self.side, self.client = side, client

    def run(self, ch: Channel, value: Value) -> Value:
        if self.client:
            return value
        s, src = self.side, value.data
        out = s.job.evaluate(s.proto.graph, src, value.batch, s.params.slots, mask_unused=True)
        src.finish()
        return value.to(Kind.CIPHER, out)


class HEBatchDownload(Step):
    """cipher -> plain@client, batch packing: flood each result ciphertext; the client decrypts the groups."""
    accepts, produces = Kind.CIPHER, Kind.PLAIN_CLIENT

    def __init__(self, side, client: bool):
        self.side, self.client = side, client

    def run(self, ch: Channel, value: Value) -> Value:
        s = self.side
        if not self.client:
            ch.send_blobs([s._finish(b) for b in value.data])
            return value.to(Kind.PLAIN_CLIENT)
        out = np.asarray(hex_.decrypt_groups(s.ctx, ch.recv_blobs(), value.batch, s.out_dim, s.params.slots))
        return value.to(Kind.PLAIN_CLIENT, out)
