"""The steps only a hybrid plan needs: HE <-> shares conversions, and the ss runner of its segment party.

Why here: `protocols/he` and `protocols/ss` never import each other, so a step that turns a ciphertext into
shares (or back) lives above both; the arithmetic and the hiding of each hand-over stay in `convert.py`.
The segments themselves are the protocols' own classes (`he.steps.HESegment`, `ss.steps.SSSegment`).

    HEToShares   cipher -> shares   server: mask every slot, re-randomize, BLOBS [one per image]; keeps -m
                                    client: decrypts its share y + m
    SharesToHE   shares -> cipher   client: encrypts its share z = x + r, BLOBS [n_ct per image]
                                    server: loads them, adds its share -r homomorphically
    OfflineCollect  any -> same: the end of the 2PC offline phase that `prepare` started (before the first
                    ss segment, so that it overlaps the HE segments before it)
    BFVSegmentStep  plain@client | shares -> shares | plain@client: a linear-only segment in BFV with its
                    hand-overs fused (GAZELLE): client n_in BLOBS [1] per image (its plaintext, or the mod-t
                    opening (x + h + r) mod t; one frame per ciphertext, so that the server loads, unmasks and
                    multiplies each while the client encrypts the next), server subtracts r, evaluates (pads
                    made ahead: `precompute`), and returns either the masked
                    result (y + m) mod t, keeping -m, or the flooded result in the clear (`convert/bfv.py`)
"""
from __future__ import annotations

import numpy as np

from ...errors import ProtocolError, ShapeError
from ...transport import Channel
from .. import convert
from ..engine import Kind, Step, Value


class HEToShares(Step):
    """cipher -> shares (GAZELLE's hand-over, CKKS masks: `convert.py` states the bits)."""
    accepts, produces = Kind.CIPHER, Kind.SHARES

    def __init__(self, seg, client: bool, log: list | None = None, out_shape=None, ctx=None):
        self.seg, self.client, self.log, self.out_shape, self.ctx = seg, client, log, out_shape, ctx

    def run(self, ch: Channel, value: Value) -> Value:
        if not self.client:
            outs, shares = [], []
            for ct in value.data:
                ct, s, _ = convert.he_to_shares_server(self.ctx, ct, self.seg.he.plan.output_slots())
                outs.append(self.ctx.ct_to_bytes(ct))
                shares.append(s)
            ch.send_blobs(outs)
            return value.to(Kind.SHARES, np.stack(shares).reshape(value.batch, *self.out_shape))
        h = self.seg
        res = h.outputs(ch.recv_blobs(), value.batch)
        pos = h.plan.output_slots()
        share = h.reshape(np.stack([convert.he_to_shares_client(h.ctx, r, pos) for r in res]))
        M = convert.he_mask_bound(h.ctx, h.ctx.ct_from_bytes(res[0]))
        self.log.append({"at": h.stop, "kind": "he->ss", "mask": f"uniform [-2^{np.log2(M):.0f}, 2^{np.log2(M):.0f}] "
                         "per slot (real and imaginary)", "hiding": f"statistical, {convert.hiding_bits(M)} bits for "
                         f"|y| < 2^{convert.DEFAULT_VALUE_BITS}", "hiding_bits": convert.hiding_bits(M)})
        return value.to(Kind.SHARES, share)


class SharesToHE(Step):
    """shares -> cipher: the client encrypts its share, the server removes the mask it holds."""
    accepts, produces = Kind.SHARES, Kind.CIPHER

    def __init__(self, seg, client: bool, log: list | None = None, ctx=None):
        self.seg, self.client, self.log, self.ctx = seg, client, log, ctx

    def run(self, ch: Channel, value: Value) -> Value:
        h = self.seg
        if self.client:
            ch.send_blobs([c for b in range(value.batch)
                           for c in convert.shares_to_he_client(h.ctx, h.plan, value.data[b], h.scale)])
            bits = convert.share_mask_bits(h.ctx, h.params.input_scale_bits)
            self.log.append({"at": h.start, "kind": "ss->he", "mask": f"uniform [-2^{bits}, 2^{bits}], "
                             f"2^-{convert.FIXED_BITS} grid", "hiding": f"statistical, "
                             f"{convert.hiding_bits(2.0 ** bits)} bits for |x| < 2^{convert.DEFAULT_VALUE_BITS}",
                             "hiding_bits": convert.hiding_bits(2.0 ** bits)})
            return value.to(Kind.CIPHER)
        blobs = ch.recv_blobs()
        n_ct = h.he.plan.input.n_ct
        if len(blobs) != value.batch * n_ct:
            raise ShapeError(f"HE segment {h.start}-{h.stop - 1}: expected {value.batch} x {n_ct} ciphertexts, "
                             f"got {len(blobs)}")
        out = []
        for b in range(value.batch):
            cts = h.load_inputs(self.ctx, blobs[b * n_ct:(b + 1) * n_ct])
            if value.data is not None:  # ct(x + r) + (-r): the server's share, gathered into the input layout
                convert.shares_to_he_server(self.ctx, h.he.plan, cts, -value.data[b])
            out.append(cts)
        return value.to(Kind.CIPHER, out)


class OfflineCollect(Step):
    """The end of the per-query 2PC offline phase, placed right before the plan's first ss segment: `prepare`
    only starts it (the dealer's and both parties' tuple generation, in their own processes), so that it runs
    while the HE segments before it are evaluated. Kind unchanged; the client's timing counts the wait here
    as offline time."""

    def __init__(self, ss, client: bool, kind: Kind):
        self.ss, self.client, self.accepts, self.produces = ss, client, kind, kind

    def run(self, ch: Channel, value: Value) -> Value:
        if not self.client:
            self.ss._offline_collect(ch, value.batch)
            return value
        off = self.ss._offline_collect(ch, value.batch)
        self.timing = {"offline_s": off["offline_s"],
                       "dealer_bytes": off["bytes_server_to_dealer"] + off["bytes_dealer_to_server"]}
        return value


class SSRunner:
    """The hybrid session's ss party (`ss_seg.py`) as an `SSSegment` runner: segment k from this side's share
    (the server's is zero when the plan starts under ss), its traffic as step timing (client)."""

    def __init__(self, ss, shapes: list[tuple]):
        self.ss, self.shapes = ss, shapes  # (start shape, stop shape) per ss segment
        #: server: k -> precompute(batch, mask) of the BFV segment after ss segment k, run while the parties work
        self.ahead: dict = {}

    def run_segment(self, ch: Channel, k: int, *args):
        if len(args) == 1:  # the client: (own,)
            y, msg = self.ss.segment(k, args[0], self.shapes[k][1])
            c = msg["comm"]
            return y, {"ss_online_s": msg["s"], "side_bytes_client_to_server": c["bytes_sent"],
                       "side_bytes_server_to_client": c["bytes_received"], "side_rounds": c["rounds"]}
        batch, own, mask = args
        if own is None:
            own = np.zeros((batch, *self.shapes[k][0]))
        if own.shape[0] != batch:
            raise ProtocolError(f"ss segment {k}: a share of batch {own.shape[0]}, expected {batch}")
        nxt = self.ahead.get(k)
        self.ss.segment(k, own, mask, None if nxt is None else (lambda: nxt(batch, mask)))
        return None


class BFVSegmentStep(Step):
    """A BFV segment with its hand-overs (perfect hiding: masks uniform mod t). `seg` is the session's
    `BFVSegmentClient` / `BFVSegmentServer` (`bfv_seg.py`); the server's incoming share is -r (the mask it
    gave the 2PC, `SSSegment`), its outgoing one the negated output mask."""

    def __init__(self, seg, client: bool, accepts: Kind, produces: Kind, ctx=None, log: list | None = None):
        self.seg, self.client, self.accepts, self.produces, self.ctx, self.log = seg, client, accepts, produces, ctx, log

    def run(self, ch: Channel, value: Value) -> Value:
        h, B = self.seg, value.batch
        if self.client:
            plain = self.accepts == Kind.PLAIN_CLIENT
            for b in range(B):  # one frame per ciphertext: the server works on each while the next is made
                for c in h.upload_iter(value.data[b], plain=plain):
                    ch.send_blobs([c])
            if not plain:
                self.log.append(h.conversion_in(h.start))
            res = ch.recv_blobs()
            if len(res) != B * h.n_out_ct:
                raise ProtocolError(f"expected {B} x {h.n_out_ct} result ciphertexts, got {len(res)}")
            parts = [res[b * h.n_out_ct:(b + 1) * h.n_out_ct] for b in range(B)]
            if self.produces == Kind.PLAIN_CLIENT:
                return value.to(Kind.PLAIN_CLIENT, h.reshape(np.stack([h.result(p) for p in parts])))
            self.log.append(h.conversion())
            return value.to(Kind.SHARES, h.reshape(np.stack([h.share(p) for p in parts]).astype(np.float64)))
        r = None if value.data is None else -np.asarray(value.data)
        prep = self._take(B, r)  # made while the 2PC before this segment ran, or now, while the client encrypts
        outs, shares = [], []
        for b in range(B):
            res, s = h.run(self.ctx, self._incoming(ch, h.n_in), None if r is None else r[b], prep[b])
            outs += res
            shares.append(s)
        ch.send_blobs(outs)
        if self.produces == Kind.PLAIN_CLIENT:
            return value.to(Kind.PLAIN_CLIENT)
        return value.to(Kind.SHARES, np.stack(shares).astype(np.float64).reshape(B, *h.out_shape))

    def _incoming(self, ch: Channel, n: int):
        """n input ciphertexts, one frame each, read as the server asks for them."""
        for _ in range(n):
            blobs = ch.recv_blobs()
            if len(blobs) != 1:
                raise ShapeError(f"HE segment {self.seg.start}-{self.seg.stop - 1}: a frame of {len(blobs)} input "
                                 "ciphertexts, expected one per frame")
            yield blobs[0]

    def precompute(self, batch: int, r: np.ndarray | None = None) -> None:
        """Server: this segment's input-independent work for the next query of `batch` images (pads, masks
        and, given the mask r the 2PC before it adds, the unmasking plaintexts), ahead of its ciphertexts.
        Nothing is remade when the work for this batch and this r is already waiting (made by a prefetch,
        `ahead.py`): it is still unused, and making it again would only cost time."""
        prep = getattr(self, "_prep", None)
        if prep is not None and prep[0] == batch and (prep[2] is r or (
                r is not None and prep[2] is not None and np.array_equal(prep[2], r))):
            return
        rs = [None] * batch if r is None else list(np.asarray(r))
        self._prep = (batch, [self.seg.prepare(self.ctx, rb) for rb in rs], r)

    def _take(self, batch: int, r) -> list:
        """The precomputed work for this query (each pad serves once: dropped here), else made now."""
        prep, self._prep = getattr(self, "_prep", None), None
        if prep is None or prep[0] != batch:
            self.precompute(batch, r)
            prep, self._prep = self._prep, None
        return prep[1]

    def drop(self) -> None:
        """Forget unused precomputed work (session closed or failed): it is never used later."""
        self._prep = None

    def describe(self) -> str:
        return f"BFVSegment[{self.seg.start}:{self.seg.stop}]({self.accepts} -> {self.produces})"
