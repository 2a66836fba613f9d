"""`hybrid`: one network, layers split between HE (BFV or CKKS) and 2PC secret sharing by a plan (GAZELLE-style).

    PrivateSession(model, protocol="hybrid", plan="he:0,ss:1-2,he:3,ss:4-5,he:6-7,ss:8,he:9")

The plan (`privinfer.planner.plan`) assigns `he` or `ss` to every layer; the server validates it against the
graph (a ReLU or MaxPool in an HE segment, or a layer without a protocol, is a typed error naming the layer).
One TCP connection per session carries everything: WELCOME (plan, per-HE-segment parameters), the keys of
every HE segment once, the `ss` set-up once (one CrypTen group and one dealer serve every ss segment), then
per query: the ss offline phase for the whole plan (one dealer batch), then the segments in order:

    HE segment   client sends ct(x) (first segment) or ct(z) with z = x + r revealed by the 2PC; the server
                 subtracts the gather of r, evaluates, then either floods and returns the logits (last
                 segment) or masks every slot and returns ct(y + m) (HE -> shares, `convert.py`).
    ss segment   the client's share (x at the start, y + m after HE) and the server's (0, or -m) are input
                 by rank 1 and rank 0; the result is revealed to the client: in the clear at the end, or as
                 x + r (shares -> HE) before an HE segment.

Privacy: the input is never seen by the server in the clear: HE ciphertexts under the client's key, shares,
and masked openings only (with a local dealer, as in `ss`, the server operator can unmask the 2PC shares:
"cryptographic-server-dealer"). The client sees masked intermediates: a linear-only HE segment runs in BFV
and its hand-overs are masked uniformly mod t (perfect hiding, `convert/bfv.py`, `convert/ring.py`); a segment
with x² runs in CKKS with 19-20 bits of statistical hiding (`convert/__init__.py`); server option `hiding`:
"best" (default), "perfect" (refuse CKKS conversions) or "statistical" (CKKS everywhere, the old behaviour).
`privacy()["conversions"]` states the hiding of every conversion.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...errors import ParameterError, PrivinferError, ProtocolError, ResourceLimitError, ShapeError
from ...model.ir import Graph
from ...planner.plan import PlanError, layer_protocols, parse_plan, plan_string
from ...transport import Channel
from .. import convert
from ..base import ClientSide, Protocol, ServerSide, register
from ..he import rerandomize
from ..ss import MAX_PRECISION_BITS
from ..ss.worker import warm_up
from ..ss.dealer import check_dealer_choice
from ..convert import bfv as bfv_conv
from ..he.bfv import FRAC_BITS, STAT_BITS
from .bfv_seg import BFVSegmentClient, BFVSegmentServer, is_linear
from .he_seg import HESegmentClient, HESegmentServer
from .ss_seg import SSSegmentsClient, SSSegmentsServer

HIDING = ("best", "perfect", "statistical")


def _bfv(h) -> bool:
    return getattr(h, "scheme", "ckks") == "bfv"


def _ss_segments(segs, he: dict) -> list:
    """The party's spec of every ss segment: masked unless it ends the plan; mod-t hand-overs next to BFV."""
    out = []
    for i, s in enumerate(segs):
        if s.protocol != "ss":
            continue
        prev, nxt = he.get(i - 1), he.get(i + 1)
        spec = {"start": s.start, "stop": s.stop, "masked": i < len(segs) - 1, "in": {"kind": "float"},
                "out": {"kind": "float"}}
        if prev is not None and _bfv(prev):
            spec["in"] = {"kind": "modt", "t": int(prev.t), "D": 1 << int(prev.weight_bits)}
        if nxt is not None and _bfv(nxt):
            spec["out"] = {"kind": "modt", "t": int(nxt.t)}
        out.append(spec)
    return out


def _check_precision(he: dict, copts: dict) -> None:
    if any(_bfv(h) for h in he.values()) and int(copts.get("precision_bits", 16)) != FRAC_BITS:
        raise ParameterError(f"a plan with BFV segments needs precision_bits={FRAC_BITS} (the BFV input scale is "
                             "CrypTen's fixed point)")


class _HybridServer(ServerSide):
    def __init__(self, proto: "Hybrid", copts: dict):
        self.proto, self.segs = proto, proto.segments
        self.ctx: dict[int, Any] = {}
        _check_precision(proto.he, copts)
        self.ss = SSSegmentsServer(proto, copts, _ss_segments(self.segs, proto.he)) if proto.has_ss else None

    def welcome(self) -> dict:
        info = {"plan": plan_string(self.segs), "max_batch": int(self.proto.options["max_batch"]),
                "he": [h.info() for h in self.proto.he.values()]}
        if self.ss is not None:
            info["ss"] = self.ss.welcome()
        return info

    def setup(self, ch: Channel) -> None:
        for i, h in self.proto.he.items():
            self.ctx[i] = h.keyed(ch.recv_blobs())
        if self.ss is not None:
            self.ss.setup(ch)
        ch.send_json({"ready": True})

    def query(self, ch: Channel, meta: dict) -> None:
        B = int(meta["batch"])
        if not 1 <= B <= int(self.proto.options["max_batch"]):
            raise ResourceLimitError(f"batch {B} outside 1..{self.proto.options['max_batch']} for this session")
        g = self.proto.graph
        if self.ss is not None:
            self.ss._offline(ch, B)
        share, r, k_ss = None, None, 0
        for i, seg in enumerate(self.segs):
            last = i == len(self.segs) - 1
            if seg.protocol == "he" and _bfv(self.proto.he[i]):
                share = self._bfv_segment(ch, i, B, r)
                r = None
            elif seg.protocol == "he":
                h, ctx = self.proto.he[i], self.ctx[i]
                blobs = ch.recv_blobs()
                n_ct = h.he.plan.input.n_ct
                if len(blobs) != B * n_ct:
                    raise ShapeError(f"HE segment {seg}: expected {B} x {n_ct} ciphertexts, got {len(blobs)}")
                outs, shares = [], []
                for b in range(B):
                    cts = h.load_inputs(ctx, blobs[b * n_ct:(b + 1) * n_ct])
                    if r is not None:
                        convert.shares_to_he_server(ctx, h.he.plan, cts, r[b])
                    out = h.evaluate(ctx, cts)
                    if last:
                        rerandomize(ctx, out, h.he.policy.flood_std)
                    else:
                        out, s, _ = convert.he_to_shares_server(ctx, out, h.he.plan.output_slots())
                        shares.append(s)
                    outs.append(ctx.ct_to_bytes(out))
                ch.send_blobs(outs)
                share = np.stack(shares).reshape(B, *g.shapes[seg.stop]) if not last else None
                r = None
            else:
                own = share if share is not None else np.zeros((B, *g.shapes[seg.start]))
                nxt = None if last else self.proto.he[i + 1]
                if last:
                    r = None
                elif _bfv(nxt):
                    r = bfv_conv.input_mask(nxt.t, B * int(np.prod(g.shapes[seg.stop]))).reshape(B, *g.shapes[seg.stop])
                else:
                    r = convert.share_mask((B, *g.shapes[seg.stop]),
                                           convert.share_mask_bits(nxt.he.ctx, nxt.he.latency_params.input_scale_bits))
                self.ss.segment(k_ss, own, r)
                k_ss += 1
                share = None

    def _bfv_segment(self, ch: Channel, i: int, B: int, r):
        """A BFV segment for a batch: the server's shares mod t of its result (None when it ends the plan)."""
        h, ctx = self.proto.he[i], self.ctx[i]
        blobs = ch.recv_blobs()
        if len(blobs) != B * h.n_in:
            raise ShapeError(f"HE segment {self.segs[i]}: expected {B} x {h.n_in} ciphertexts, got {len(blobs)}")
        outs, shares = [], []
        for b in range(B):
            res, s = h.run(ctx, blobs[b * h.n_in:(b + 1) * h.n_in], None if r is None else r[b])
            outs += res
            shares.append(s)
        ch.send_blobs(outs)
        return None if h.last else np.stack(shares).astype(np.float64).reshape(B, *h.out_shape)

    def close(self) -> None:
        self.ctx = {}
        if self.ss is not None:
            self.ss.close()


class _HybridClient(ClientSide):
    def __init__(self, welcome: dict, graph: Graph, copts: dict):
        try:
            self.segs = parse_plan(welcome["plan"], graph)
            self.max_batch = int(welcome["max_batch"])
            he_infos = list(welcome.get("he", []))
        except (KeyError, TypeError, ValueError) as e:
            raise ProtocolError(f"malformed hybrid WELCOME: {e!r}") from None
        self.graph, self.copts = graph, copts
        want = [i for i, s in enumerate(self.segs) if s.protocol == "he"]
        if len(he_infos) != len(want):
            raise ProtocolError(f"the server describes {len(he_infos)} HE segments, the plan has {len(want)}")
        self.he = {i: (BFVSegmentClient(graph, info) if isinstance(info, dict) and info.get("scheme") == "bfv"
                       else HESegmentClient(graph, info)) for i, info in zip(want, he_infos)}
        for i, h in self.he.items():
            if (h.start, h.stop) != (self.segs[i].start, self.segs[i].stop):
                raise ProtocolError(f"HE segment {self.segs[i]} does not match the server's {h.start}-{h.stop - 1}")
        self.ss = None
        if any(s.protocol == "ss" for s in self.segs):
            if "ss" not in welcome:
                raise ProtocolError("the plan has ss segments but the server sent no 2PC parameters")
            _check_precision(self.he, copts)
            self.ss = SSSegmentsClient(welcome["ss"], graph, copts, _ss_segments(self.segs, self.he))
        self.conversions: list[dict] = []

    def query_meta(self, x: np.ndarray) -> dict:
        if x.shape[0] > self.max_batch:
            raise ResourceLimitError(f"batch {x.shape[0]} exceeds this session's limit of {self.max_batch}")
        return {"batch": int(x.shape[0])}

    def setup(self, ch: Channel) -> None:
        for h in self.he.values():
            ch.send_blobs(h.ctx.public_blobs())
        if self.ss is not None:
            self.ss.setup(ch)
        if not ch.recv_json().get("ready"):
            raise ProtocolError("server did not accept the hybrid set-up")

    def query(self, ch: Channel, x: np.ndarray) -> np.ndarray:
        B = int(x.shape[0])
        t0 = time.perf_counter()
        timing = {"offline_s": 0.0, "online_s": 0.0, "side_bytes_client_to_server": 0,
                  "side_bytes_server_to_client": 0, "side_rounds": 0, "dealer_bytes": 0}
        if self.ss is not None:
            off = self.ss._offline(ch, B)
            timing["offline_s"] = off["offline_s"]
            timing["dealer_bytes"] = off["bytes_server_to_dealer"] + off["bytes_dealer_to_server"]
        value, share, out, k_ss, conv = x, None, None, 0, []
        for i, seg in enumerate(self.segs):
            last = i == len(self.segs) - 1
            if seg.protocol == "he" and _bfv(self.he[i]):
                h = self.he[i]
                ch.send_blobs([c for b in range(B) for c in h.upload(value[b], plain=i == 0)])
                res = ch.recv_blobs()
                if len(res) != B * h.n_out_ct:
                    raise ProtocolError(f"expected {B} x {h.n_out_ct} result ciphertexts, got {len(res)}")
                parts = [res[b * h.n_out_ct:(b + 1) * h.n_out_ct] for b in range(B)]
                if last:
                    out = np.stack([h.result(p) for p in parts])
                else:
                    share = h.reshape(np.stack([h.share(p) for p in parts]).astype(np.float64))
                    conv.append(h.conversion())
            elif seg.protocol == "he":
                h = self.he[i]
                ch.send_blobs([c for b in range(B) for c in convert.shares_to_he_client(h.ctx, h.plan, value[b], h.scale)])
                res = h.outputs(ch.recv_blobs(), B)
                pos = h.plan.output_slots()
                if last:
                    out = np.stack([h.ctx.decrypt(r)[pos] for r in res])
                else:
                    share = h.reshape(np.stack([convert.he_to_shares_client(h.ctx, r, pos) for r in res]))
                    ct = h.ctx.ct_from_bytes(res[0])
                    M = convert.he_mask_bound(h.ctx, ct)
                    conv.append({"at": seg.stop, "kind": "he->ss", "mask": f"uniform [-2^{np.log2(M):.0f}, 2^"
                                 f"{np.log2(M):.0f}] per slot (real and imaginary)",
                                 "hiding": f"statistical, {convert.hiding_bits(M)} bits for |y| < 2^"
                                           f"{convert.DEFAULT_VALUE_BITS}", "hiding_bits": convert.hiding_bits(M)})
            else:
                own = share if share is not None else value
                value, msg = self.ss.segment(k_ss, own, self.graph.shapes[seg.stop])
                k_ss += 1
                share = None
                timing["ss_online_s"] = timing.get("ss_online_s", 0.0) + msg["s"]
                timing["side_bytes_client_to_server"] += msg["comm"]["bytes_sent"]
                timing["side_bytes_server_to_client"] += msg["comm"]["bytes_received"]
                timing["side_rounds"] += msg["comm"]["rounds"]
                if last:
                    out = value
                elif _bfv(self.he[i + 1]):
                    conv.append(self.he[i + 1].conversion_in(seg.stop))
                else:
                    nxt = self.he[i + 1]
                    bits = convert.share_mask_bits(nxt.ctx, nxt.params.input_scale_bits)
                    conv.append({"at": seg.stop, "kind": "ss->he", "mask": f"uniform [-2^{bits}, 2^{bits}], "
                                 f"2^-{convert.FIXED_BITS} grid", "hiding": f"statistical, "
                                 f"{convert.hiding_bits(2.0 ** bits)} bits for |x| < 2^{convert.DEFAULT_VALUE_BITS}",
                                 "hiding_bits": convert.hiding_bits(2.0 ** bits)})
        self.conversions = conv
        timing["online_s"] = time.perf_counter() - t0 - timing["offline_s"]
        self.query_timing = timing
        return out

    def privacy(self) -> dict:
        base = self.ss.privacy() if self.ss is not None else None
        guarantee = base["guarantee"] if base is not None else "cryptographic-input-only"
        perfect = all(c.get("hiding") == "perfect" for c in self.conversions)
        last = self.he.get(len(self.segs) - 1)
        circuit = min([h.circuit_bits for h in self.he.values() if _bfv(h)] + [float("inf")])
        # weights hidden from the client: perfect masks, every BFV result flooded for >= 40 bits, no CKKS logits
        model_private = perfect and circuit >= STAT_BITS and (last is None or _bfv(last))
        if guarantee == "cryptographic-trusted-dealer" and not model_private:
            guarantee = "cryptographic-input-only"  # the weak CKKS masks do not hide intermediates formally
        out = {"protocol": "hybrid", "guarantee": guarantee, "plan": plan_string(self.segs),
               "layer_protocols": layer_protocols(self.segs),
               "input_private": base["input_private"] if base is not None else True, "model_private": model_private,
               "conversions": self.conversions,
               "he": "BFV for linear-only segments (masks uniform mod t: perfect hiding; results re-randomized and "
                     "noise-flooded, bits per conversion), CKKS for segments with x²; 128-bit security; "
                     "keys of every HE segment sent once per session",
               "not_protected": ["architecture and plan", "each BFV segment's plaintext modulus t (its bit size "
                                 "follows the segment's value bound)"]}
        if circuit < STAT_BITS:
            out["not_protected"].append(f"the weights, against a client reading the decryption noise of BFV "
                                        f"results: the flood gives {circuit} statistical bits (worst-case bound)")
        if not perfect:
            out["not_protected"].append("intermediate activations at CKKS conversions only as well as the stated "
                                        "mask bits hide them (19-20 bits, see protocols/convert)")
        if base is not None:
            out["ss"] = {k: base[k] for k in ("dealer", "statement", "threat_model", "fixed_point_bits", "transport")}
        return out

    def close(self) -> None:
        if self.ss is not None:
            self.ss.close()


@register
class Hybrid(Protocol):
    name = "hybrid"
    summary = "a plan splits the layers between CKKS HE and 2PC (CrypTen), with masked conversions (GAZELLE-style)"
    inner_links = ("gloo: client rank <-> server rank (ss segments)", "gloo: dealer <-> ranks (ss segments)")
    server_options: dict[str, Any] = {"plan": None, "dealer": None, "server_secret": None, "mpc_timeout": 60.0,
                                      "threads": 1, "gloo_ifname": None, "max_batch": 16,
                                      # the `he` circuit-privacy policy of the segment that returns logits
                                      "circuit_privacy": "flood", "flood_std": None, "max_queries": None,
                                      # conversions: BFV (perfect) for linear HE segments, CKKS elsewhere ("best");
                                      # refuse CKKS conversions ("perfect"); CKKS everywhere ("statistical")
                                      "hiding": "best"}
    client_options: dict[str, Any] = {"precision_bits": 16, "threads": 1, "gloo_ifname": None, "client_secret": None}
    local_client_options = frozenset({"client_secret"})
    local_session_defaults = {"dealer": "local"}

    @classmethod
    def check_graph(cls, graph: Graph) -> None:
        """Every layer kind is valid for some plan; the plan itself is checked in __init__."""

    def __init__(self, graph: Graph, **options):
        super().__init__(graph, **options)
        if self.options["plan"] is None:
            raise PlanError("protocol 'hybrid' needs a plan, e.g. plan='he:0-3,ss:4-' (--plan on the CLI)")
        self.segments = parse_plan(self.options["plan"], graph)
        self.has_ss = any(s.protocol == "ss" for s in self.segments)
        self.secret = check_dealer_choice(self.options["dealer"], self.options["server_secret"]) if self.has_ss else None
        if float(self.options["mpc_timeout"]) <= 0:
            raise PrivinferError("mpc_timeout must be positive")
        he_opts = {k: self.options[k] for k in ("circuit_privacy", "flood_std", "max_queries")}
        n = len(self.segments)
        hiding = self.options["hiding"]
        if hiding not in HIDING:
            raise ParameterError(f"hiding must be one of {HIDING}, got {hiding!r}")
        self.he = {}
        for i, s in enumerate(self.segments):
            if s.protocol != "he":
                continue
            if is_linear(graph, s.start, s.stop) and hiding != "statistical":
                try:
                    self.he[i] = BFVSegmentServer(graph, s.start, s.stop, i == n - 1)  # perfect hand-overs
                    continue
                except ParameterError:
                    if hiding == "perfect":
                        raise
            if hiding == "perfect" and n > 1:
                kinds = sorted({graph.layers[k].kind for k in range(s.start, s.stop)})
                raise PlanError(f"HE segment {s} holds {kinds}: only linear segments (conv2d, linear, avgpool2d, "
                                "flatten) run in BFV with perfectly hiding conversions; CKKS conversions hide 19-20 "
                                "bits (hiding='best' allows them)")
            self.he[i] = HESegmentServer(graph, s.start, s.stop, i == n - 1, he_opts)
        if self.has_ss:
            warm_up()  # the CrypTen fork server loads while the HE segments are prepared

    def server_side(self, client_options: dict) -> ServerSide:
        return _HybridServer(self, client_options)

    @classmethod
    def validate_client_options(cls, options: dict) -> dict:
        opts = super().validate_client_options(options)
        bits = opts["precision_bits"]
        if not isinstance(bits, int) or not 1 <= bits <= MAX_PRECISION_BITS:
            raise ParameterError(f"precision_bits must be an integer in 1..{MAX_PRECISION_BITS}, got {bits!r}")
        return opts

    @classmethod
    def client_side(cls, welcome: dict, graph: Graph, **client_options) -> ClientSide:
        warm_up()
        return _HybridClient(welcome, graph, cls.validate_client_options(client_options))
