"""Fused hand-overs: where the hybrid engine runs a ReLU (and a MaxPool's last level) inside a BFV hand-over,
priced as one joint row, from the engine's own decision.

Why: next to a BFV segment the hybrid party does not run "lift, then ReLU" or "ReLU, then mod-t opening" as
two secure comparisons: `protocols/hybrid/party.py::_fuse` folds the ReLU into the hand-over (`ring.lift_relu`,
`ring.relu_reduce_reveal`), a lone ReLU between two BFV segments into one comparison
(`ring.lift_relu_reduce_reveal`), and an even MaxPool window's last level with the ReLU into the opening
(`ring.pool_relu_reduce_reveal`). Priced as separate rows, GAZELLE's split on minionn-mnist was predicted
with 119 rounds where it runs 71. So the planner asks `_fuse` itself (one source of truth: when the engine
changes what it fuses, these rows follow) on every short ss segment next to a BFV segment, and adds a row
for each decision that consumes the whole segment; the joint operation is counted on real CrypTen parties
like every other piece (`ss_cost._run_handover`).

A row is a span of layers with the value kinds at its ends: `bfv_out` (a BFV result, shares mod t) or
`shares` in, `bfv_in` (opened mod t to the client) or `shares` out. Where the decision depends on what follows
in the same ss segment (a ReLU right after a lift is not fused when a MaxPool follows it: the engine swaps
them first; a ReLU before an opening joins a MaxPool before it), the row is kept only if `_fuse` decides the
same for the segment one layer longer, so a row never promises a fusion the engine would not make.
"""
from __future__ import annotations

from ..model.ir import Graph

#: _fuse's (head, tail) -> the hand-over kind counted for it (ss_cost.HANDOVER_KINDS)
FUSED_KIND = {("relu", None): "lift_relu", (None, "relu"): "relu_reduce", (None, "pool_relu"): "pool_relu_reduce",
              ("whole", "whole"): "lift_relu_reduce"}


def _decision(graph: Graph, a: int, b: int, modt_in: bool, modt_out: bool):
    """(head, tail, layers left) as the hybrid party fuses the ss segment [a, b)."""
    from ..protocols.hybrid.party import _fuse
    spec = {"start": a, "stop": b, "masked": modt_out, "in": {"kind": "modt" if modt_in else "float"},
            "out": {"kind": "modt" if modt_out else "float"}}
    layers = _fuse(graph, spec)
    return spec["head"], spec["tail"], layers, spec


def fused_handovers(graph: Graph, lifts: set[int], reduces: set[int]) -> list[dict]:
    """Every joint row: after a BFV segment ending at i (`lifts`) and/or before one starting at j (`reduces`).
    Each: {key, kind, start, stop, kind_in, kind_out, shape (the counted input, batch 1), pool or None}."""
    n = len(graph)
    out = []
    for a in range(n):
        for b in (a + 1, a + 2):
            if b > n:
                continue
            for modt_in, modt_out in ((True, False), (False, True), (True, True)):
                if (modt_in and a not in lifts) or (modt_out and b not in reduces):
                    continue
                head, tail, left, spec = _decision(graph, a, b, modt_in, modt_out)
                kind = FUSED_KIND.get((head, tail))
                if left or kind is None or (head is not None) != modt_in or (tail is not None) != modt_out:
                    continue  # not fused, fused with layers left (pieces of their own), or a plain lift/reduce
                if not _stable(graph, a, b, modt_in, modt_out, head, tail, n):
                    continue
                pool = spec.get("pool")
                shape = graph.shapes[b - 1] if kind == "pool_relu_reduce" else graph.shapes[a]
                out.append({"key": f"{kind}-{a}-{b}", "kind": kind, "start": a, "stop": b,
                            "kind_in": "bfv_out" if modt_in else "shares", "kind_out": "bfv_in" if modt_out else "shares",
                            "shape": [1, *shape], "pool": [list(pool[0]), list(pool[1])] if pool else None})
    return out


def _stable(graph: Graph, a: int, b: int, modt_in: bool, modt_out: bool, head, tail, n: int) -> bool:
    """The same fusion when the ss segment goes on one layer further where it can (a plain side)."""
    if not modt_out and b < n:  # the segment may continue after b: the head must stay fused
        h, _, _, _ = _decision(graph, a, b + 1, modt_in, False)
        if h != head:
            return False
    if not modt_in and a > 0:  # the segment may have begun before a: the tail must stay the same
        _, t, _, _ = _decision(graph, a - 1, b, False, modt_out)
        if t != tail:
            return False
    return True
