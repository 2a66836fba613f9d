"""The two ends of one hybrid connection (`_HybridServer`, `_HybridClient`): each builds its chain of steps from the
plan and runs it through the engine, with the set-up (keys of every HE segment once, one `ss` group) and the
per-query offline phase or its prefetch (`ahead.py`).

Why apart from the package: `__init__.py` is the protocol (options, plan validation, the segments' servers
built once per served model); this module is one connection's state, as `he/sides.py` is for `he`.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...errors import ParameterError, PrivacyChoiceError, ProtocolError, ResourceLimitError
from ...model.ir import Graph, graph_to_bytes, load_graph
from ...planner.plan import parse_plan, plan_string
from ...transport import Channel
from .. import convert
from ..engine import EngineClient, EngineServer, Kind, Layers, check_chain
from ..he.steps import HEDownload, HESegment, HEUpload
from ..noisy import release_steps
from ..ss.steps import SSSegment, SSShare
from ..convert import bfv as bfv_conv
from ..he.bfv import FRAC_BITS
from .ahead import ClientAhead, MaskAhead, ServerAhead, prefetch_flag
from .bfv_seg import BFVSegmentClient
from .he_seg import HESegmentClient
from .ss_seg import SSSegmentsClient, SSSegmentsServer
from .privacy import _bfv, _next, _noisy_start, _reveals, hybrid_privacy
from .steps import BFVSegmentStep, HEToShares, OfflineCollect, SharesToHE, SSRunner



def _ss_segments(segs, he: dict) -> list:
    """The party's spec of every ss segment: masked when an HE segment follows it; mod-t hand-overs next to BFV."""
    out = []
    for i, s in enumerate(segs):
        if s.protocol != "ss":
            continue
        prev, nxt = he.get(i - 1), he.get(i + 1)
        spec = {"start": s.start, "stop": s.stop, "masked": _next(segs, i) == "he", "in": {"kind": "float"},
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


def _bfv_produces(segs, i: int) -> Kind:
    """A BFV segment ends at the client in the clear (flooded) or as shares mod t (an ss segment follows)."""
    return Kind.PLAIN_CLIENT if _reveals(segs, i) else Kind.SHARES


def _ss_shapes(segs, graph: Graph) -> list:
    return [(graph.shapes[s.start], graph.shapes[s.stop]) for s in segs if s.protocol == "ss"]


class _HybridServer(EngineServer):
    def __init__(self, proto: "Hybrid", copts: dict):
        self.proto, self.segs = proto, proto.segments
        self.ctx: dict[int, Any] = {}
        _check_precision(proto.he, copts)
        self.ss = SSSegmentsServer(proto, copts, _ss_segments(self.segs, proto.he)) if proto.has_ss else None
        self.prefetch, self.ahead = prefetch_flag(copts.get("prefetch", False)), None

    def welcome(self) -> dict:
        info = {"plan": plan_string(self.segs), "max_batch": int(self.proto.options["max_batch"]),
                "he": [h.info() for h in self.proto.he.values()]}
        if self.ss is not None:
            info["ss"] = self.ss.welcome()
        if self.proto.noisy_clips is not None:
            info["noisy"] = {"recommended": self.proto.noisy_clips}
        return info

    def setup(self, ch: Channel) -> None:
        for i, h in self.proto.he.items():
            self.ctx[i] = h.keyed(ch.recv_blobs())
        if self.ss is not None:
            self.ss.setup(ch)
        for seg in self.segs:  # a client segment runs on weights the server hands over
            if seg.protocol == "plain":
                ch.send_bytes(graph_to_bytes(self.proto.graph.slice(seg.start, seg.stop)))
        self.chain = self._chain()
        check_chain(self.chain)
        ch.send_json({"ready": True})

    def _chain(self) -> list:
        g, segs, steps, kind, k_ss = self.proto.graph, self.segs, [], Kind.PLAIN_CLIENT, 0
        runner = SSRunner(self.ss, _ss_shapes(segs, g)) if self.ss is not None else None
        for i, seg in enumerate(segs):
            if seg.protocol == "he" and _bfv(self.proto.he[i]):
                steps.append(BFVSegmentStep(self.proto.he[i], False, kind, _bfv_produces(segs, i), ctx=self.ctx[i]))
            elif seg.protocol == "he":
                h, ctx = self.proto.he[i], self.ctx[i]
                steps.append(HEUpload(ctx, h.he.plan, 2.0 ** h.he.latency_params.input_scale_bits, False,
                                      len(h.he.latency_params.coeff_mod_bit_sizes) - 1)
                             if kind == Kind.PLAIN_CLIENT else SharesToHE(h, False, ctx=ctx))
                steps.append(HESegment(h.he.compiled, ctx, seg.start, seg.stop))
                steps.append(HEDownload(ctx, False, h.he.policy.flood_std) if _reveals(segs, i)
                             else HEToShares(h, False, out_shape=g.shapes[seg.stop], ctx=ctx))
            elif seg.protocol == "ss":
                if k_ss == 0:  # the offline phase `prepare` started ends here, after the HE segments before it
                    steps.append(OfflineCollect(self.ss, False, kind))
                if kind == Kind.PLAIN_CLIENT:
                    steps.append(SSShare(False))
                masked = _next(segs, i) == "he"
                steps.append(SSSegment(runner, False, k_ss, seg.start, seg.stop,
                                       Kind.SHARES if masked else Kind.PLAIN_CLIENT,
                                       MaskAhead(self._mask(i + 1, seg.stop)) if masked else None))
                k_ss += 1
            elif seg.protocol == "plain":
                steps.append(Layers(g, seg.start, seg.stop, Kind.PLAIN_CLIENT, holder=False))
            else:  # noisy: the plan ends here (planner.plan checks it)
                steps.extend(release_steps(g, seg.start, client=False))
            kind = steps[-1].produces
        for a, b in zip(steps, steps[1:]):  # a BFV segment's pads are made while the ss segment before it runs
            if isinstance(a, SSSegment) and isinstance(b, BFVSegmentStep):
                runner.ahead[a.k] = b.precompute
        if self.prefetch:  # the next query's material, made after each answer (`ahead.py`)
            self.ahead = ServerAhead(self.ss, steps)
        return steps

    def _mask(self, j: int, at: int):
        nxt = self.proto.he[j]
        shape = self.proto.graph.shapes[at]
        if _bfv(nxt):  # uniform mod t: the 2PC opens (x + h + r) mod t to the client
            return lambda batch: bfv_conv.input_mask(nxt.t, batch * int(np.prod(shape))).reshape(batch, *shape)
        bits = convert.share_mask_bits(nxt.he.ctx, nxt.he.latency_params.input_scale_bits)
        return lambda batch: convert.share_mask((batch, *shape), bits)

    def prepare(self, ch: Channel, meta: dict) -> None:
        B = int(meta["batch"])
        if not 1 <= B <= int(self.proto.options["max_batch"]):
            raise ResourceLimitError(f"batch {B} outside 1..{self.proto.options['max_batch']} for this session")
        if self.ahead is not None:  # started after the last answer, or started now
            self.ahead.start(ch, B)
        elif self.ss is not None:  # one dealer batch for every ss segment of the plan, collected by the chain's
            self.ss._offline_start(ch, B)  # OfflineCollect step: it runs while the HE segments before it do

    def after(self, ch: Channel, meta: dict) -> None:
        if self.ahead is not None:
            self.ahead.after(ch, int(meta["batch"]))

    def abort(self) -> None:
        if self.ahead is not None:
            self.ahead.drop()

    def close(self) -> None:
        if self.ahead is not None:
            self.ahead.drop()
        self.ctx = {}
        self.chain = ()
        if self.ss is not None:
            self.ss.close()


class _HybridClient(EngineClient):
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
        self.noisy = None
        if _noisy_start(self.segs) is not None:
            if copts.get("epsilon") is None:  # a DP release of the client's data is the client's choice
                raise PrivacyChoiceError(f"the server's plan {plan_string(self.segs)} releases layer "
                                         f"{_noisy_start(self.segs)}'s input with differential privacy; pass "
                                         "epsilon=... to accept it")
            from ..noisy import NoisyRelease
            rec = (welcome.get("noisy") or {}).get("recommended") or {}
            self.noisy = NoisyRelease(copts, rec.get("l1" if (copts.get("mechanism") or "laplace") == "laplace" else "l2"))
        self.client_layers: dict[int, Graph] = {}
        self.ahead = ClientAhead(self.ss) if self.ss is not None and copts.get("prefetch") else None
        self.conversions: list[dict] = []
        self._log: list[dict] = []

    def query_meta(self, x: np.ndarray) -> dict:
        if x.shape[0] > self.max_batch:
            raise ResourceLimitError(f"batch {x.shape[0]} exceeds this session's limit of {self.max_batch}")
        if self.noisy is not None:
            self.noisy.accountant.check(int(x.shape[0]))  # refuse before anything is sent
        return {"batch": int(x.shape[0])}

    def setup(self, ch: Channel) -> None:
        for h in self.he.values():
            ch.send_blobs(h.ctx.public_blobs())
        if self.ss is not None:
            self.ss.setup(ch)
        for i, seg in enumerate(self.segs):
            if seg.protocol == "plain":
                part = load_graph(ch.recv_bytes())
                if part.spec() != self.graph.slice(seg.start, seg.stop).spec():
                    raise ProtocolError(f"the weights of client segment {seg} do not match the architecture")
                self.client_layers[i] = part
        if not ch.recv_json().get("ready"):
            raise ProtocolError("server did not accept the hybrid set-up")
        self.chain = self._chain()
        check_chain(self.chain)

    def _chain(self) -> list:
        g, segs, steps, kind, k_ss, log = self.graph, self.segs, [], Kind.PLAIN_CLIENT, 0, self._log
        runner = SSRunner(self.ss, _ss_shapes(segs, g)) if self.ss is not None else None
        for i, seg in enumerate(segs):
            if seg.protocol == "he" and _bfv(self.he[i]):
                steps.append(BFVSegmentStep(self.he[i], True, kind, _bfv_produces(segs, i), log=log))
            elif seg.protocol == "he":
                h = self.he[i]
                steps.append(HEUpload(h.ctx, h.plan, h.scale, True) if kind == Kind.PLAIN_CLIENT
                             else SharesToHE(h, True, log))
                steps.append(HESegment(start=seg.start, stop=seg.stop))
                steps.append(HEDownload(h.ctx, True, out_slots=h.plan.output_slots(), reshape=h.reshape)
                             if _reveals(segs, i) else HEToShares(h, True, log))
            elif seg.protocol == "ss":
                if k_ss == 0:
                    steps.append(OfflineCollect(self.ss, True, kind))
                if kind == Kind.PLAIN_CLIENT:
                    steps.append(SSShare(True))
                steps.append(SSSegment(runner, True, k_ss, seg.start, seg.stop,
                                       Kind.SHARES if _next(segs, i) == "he" else Kind.PLAIN_CLIENT))
                k_ss += 1
            elif seg.protocol == "plain":
                steps.append(Layers(self.client_layers[i], 0, seg.stop - seg.start, Kind.PLAIN_CLIENT, holder=True))
            else:
                steps.extend(release_steps(g, seg.start, client=True, privatize=self.noisy.release))
            kind = steps[-1].produces
        return steps

    def prepare(self, ch: Channel, batch: int) -> dict:
        self._log.clear()
        if self.ss is None:
            return {}
        t0 = time.perf_counter()
        if self.ahead is not None:  # started after the last answer (prefetch), or started now
            self.ahead.start(ch, batch)
        else:  # finished by the chain's OfflineCollect step (its timing adds the rest)
            self.ss._offline_start(ch, batch)
        return {"offline_s": time.perf_counter() - t0}

    def after(self, ch: Channel, batch: int) -> None:
        if self.ahead is not None:
            self.ahead.after(ch, batch)

    def finish_timing(self, timing: dict, elapsed_s: float) -> dict:
        out = {"offline_s": 0.0, "online_s": 0.0, "side_bytes_client_to_server": 0, "side_bytes_server_to_client": 0,
               "side_rounds": 0, "dealer_bytes": 0, **timing}
        out["online_s"] = elapsed_s - out["offline_s"]
        self.conversions = list(self._log)
        return out

    def privacy(self) -> dict:
        return hybrid_privacy(self)

    def close(self) -> None:
        if self.ss is not None:
            self.ss.close()
