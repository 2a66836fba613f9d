"""Parse and validate a hybrid execution plan against a graph.

Why a module of its own: the server must refuse a plan before it spends minutes building HE plaintexts or
spawning CrypTen parties, and the client must derive the very same segments from the public architecture.
A plan assigns one protocol to every layer. It is written as a short string, `"he:0-3,ss:4-"` (inclusive
ranges of layer indices, an open end runs to the last layer, a single index is one layer), or as a list:
either one protocol name per layer (`["he", "he", "ss", ...]`) or range strings (`["he:0-3", "ss:4-"]`).
Adjacent ranges of the same protocol merge into one segment.

This module imports only `model/` and `errors`: it knows which layer kinds each protocol can run, not how.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence, Union

from ..errors import PrivinferError, UnsupportedLayerError
from ..model.ir import Graph

_ALL = ("conv2d", "linear", "avgpool2d", "maxpool2d", "relu", "poly", "flatten")
#: protocol -> layer kinds it can run inside a hybrid plan. `he`: ciphertexts at the server; `ss`: shares;
#: `plain`: plaintext AT THE CLIENT (those layers' weights are sent to it); `noisy`: the client releases the
#: segment's input with epsilon-DP and the server runs the layers on it in the clear
PLAN_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "he": ("conv2d", "linear", "avgpool2d", "flatten", "poly"),
    "ss": _ALL,
    "plain": _ALL,
    "noisy": _ALL,
}
#: protocols whose segment leaves the value at the server in the clear: nothing may follow them in a plan
PLAN_TERMINAL: frozenset = frozenset({"noisy"})
HE_MAX_POLY_DEGREE = 3
_RANGE = re.compile(r"^\s*([a-z]+)\s*:\s*(\d+)\s*(?:(-)\s*(\d*))?\s*$")

PlanSpec = Union[str, Sequence[str]]


class PlanError(PrivinferError):
    """A plan that does not parse, or that does not fit the graph."""


@dataclass(frozen=True)
class Segment:
    """Layers [start, stop) of the graph, run by `protocol`."""
    protocol: str
    start: int
    stop: int

    def __str__(self) -> str:
        end = "" if self.stop - 1 == self.start else f"-{self.stop - 1}"
        return f"{self.protocol}:{self.start}{end}"


def _valid_for(layer) -> list[str]:
    return [p for p in PLAN_PROTOCOLS if _fits(p, layer)]


def _fits(proto: str, layer) -> bool:
    if layer.kind not in PLAN_PROTOCOLS[proto]:
        return False
    return not (proto == "he" and layer.kind == "poly" and layer.degree > HE_MAX_POLY_DEGREE)


def _per_layer(plan: PlanSpec, n: int) -> list[str | None]:
    if isinstance(plan, str):
        items = [p for p in plan.split(",") if p.strip()]
    elif isinstance(plan, (list, tuple)) and all(isinstance(p, str) for p in plan):
        items = list(plan)
        if items and all(":" not in p for p in items):  # one protocol name per layer
            if len(items) != n:
                raise PlanError(f"a per-layer plan needs {n} protocol names (one per layer), got {len(items)}")
            return [p.strip() for p in items]
    else:
        raise PlanError(f"a plan is a string like 'he:0-3,ss:4-' or a list of strings, got {type(plan).__name__}")
    if not items:
        raise PlanError("the plan is empty; write it like 'he:0-3,ss:4-'")
    out: list[str | None] = [None] * n
    for item in items:
        m = _RANGE.match(item)
        if not m:
            raise PlanError(f"plan item {item.strip()!r} is not PROTOCOL:START-END (e.g. 'he:0-3', 'ss:4-', 'ss:7')")
        proto, a, dash, b = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        stop = (n - 1 if not b else int(b)) if dash else a
        if a >= n or stop >= n or stop < a:
            raise PlanError(f"plan item {item.strip()!r}: layers {a}-{stop} outside 0..{n - 1} or reversed")
        for i in range(a, stop + 1):
            if out[i] is not None:
                raise PlanError(f"layer {i} is assigned twice ({out[i]!r} and {proto!r})")
            out[i] = proto
    return out


def parse_plan(plan: PlanSpec, graph: Graph) -> tuple[Segment, ...]:
    """The plan's segments, in order; a `PlanError` / `UnsupportedLayerError` names the layer at fault."""
    n = len(graph.layers)
    per = _per_layer(plan, n)
    for i, (proto, layer, name) in enumerate(zip(per, graph.layers, graph.names)):
        valid = "/".join(_valid_for(layer)) or "none"
        if proto is None:
            raise PlanError(f"layer {i} ({name}: {layer.kind}) has no protocol in the plan; valid for it: {valid}")
        if proto not in PLAN_PROTOCOLS:
            raise PlanError(f"layer {i} ({name}): unknown protocol {proto!r}; plans use {sorted(PLAN_PROTOCOLS)}")
        if not _fits(proto, layer):
            why = (f"a polynomial of degree {layer.degree} > {HE_MAX_POLY_DEGREE}" if layer.kind == "poly"
                   else f"{layer.kind}")
            raise UnsupportedLayerError(f"layer {i} ({name}: {why}) cannot run under {proto!r}; valid for it: {valid}")
    segs: list[Segment] = []
    for i, proto in enumerate(per):
        if segs and segs[-1].protocol == proto:
            segs[-1] = Segment(proto, segs[-1].start, i + 1)
        else:
            segs.append(Segment(proto, i, i + 1))
    for s, nxt in zip(segs, segs[1:]):
        if s.protocol in PLAN_TERMINAL:
            raise PlanError(f"segment {s} must end the plan: its values stay at the server in the clear, so "
                            f"{nxt} cannot follow it")
    return tuple(segs)


def plan_string(segments: Sequence[Segment]) -> str:
    """The canonical string of a parsed plan (what bench records and WELCOME carry)."""
    return ",".join(str(s) for s in segments)


def layer_protocols(segments: Sequence[Segment]) -> list[str]:
    """The protocol of each layer, in order."""
    return [s.protocol for s in segments for _ in range(s.start, s.stop)]
