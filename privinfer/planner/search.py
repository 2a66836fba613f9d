"""The search: the cheapest plan through a table of candidate segments, by exact dynamic programming.

Why one table: every way of running a piece of the network is a row `Row(protocol, start, stop, kind_in,
kind_out, cost)`: a 2PC layer (shares -> shares), an HE segment (he_in -> he_out, priced at the parameters the
engine picks for that segment's depth: the HE level is part of the row), a conversion between value kinds at a
layer boundary (zero layers: client -> shares, shares -> he_in, he_out -> shares, he_out -> client, ...), or a
whole-model protocol (client -> client over every layer: `he`, `ss`, `cheetah`, `noisy` with its split). New
segment kinds (noisy or plain segments inside the hybrid engine, BFV linear segments with perfect-hiding
conversions) are new rows; the search does not change.

The search is a shortest path over states (layer boundary, value kind, engines whose per-query fixed cost is
already paid) from (0, client) to (n, client). A row may carry a `once` cost (e.g. the 2PC engine's per-query
dealer round trip, paid once however many ss segments a plan has): the state remembers it, so the DP stays
exact. Rows the policy forbids are removed before the search (`Policy.allows`), so no plan can go below it.
`brute_force` enumerates every path (for tests on small tables).

The 2PC offline phase overlaps an HE prefix (latency objective). A hybrid query STARTS the per-query offline
phase (one dealer batch for every ss segment of the plan) before its first segment and collects it right
before the first 2PC step (`protocols/hybrid` `OfflineCollect`), so a plan that begins with HE segments pays
max(prefix, offline) + the rest, not the sum. The offline phase is the `ss-offline` once cost plus each 2PC
row's `offline_s` (its dealer tuples). That latency is no longer a sum of edge weights, so the search keeps,
per state, labels (d, e). With P the HE prefix, O the offline phase and R the rest so far: e = O + R (the
path timed from the collect on, had the offline phase waited for nothing) and d = max(P + R, O + R) = max(P, O)
+ R, the latency so far; e is None while no 2PC row has been taken (then d = P). A 2PC row adds its online
part to both and its offline part to e, and d = max(d + online, e) as it goes (`_step`); d and e never
decrease along a path, so a label search in (d, e) order with Pareto pruning is exact (Martins' algorithm):
a label is dropped only when another at the same state is no worse in both. Other objectives (bytes, client
seconds) add, and every label has e = None: the search is plain Dijkstra. `path_value` is the closed form
(max(P, O) + R over a whole path) that the tests compare the search against.
"""
from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

from ..errors import ParameterError, PrivinferError
from .cost import Cost, NetworkProfile, parse_network

# he_last: an HE result that may leave only as logits; bfv_in / bfv_out: a BFV segment's input / masked result
KINDS = ("client", "shares", "he_in", "he_out", "he_last", "bfv_in", "bfv_out")
HIDING = ("perfect", "statistical")
OFFLINE = "ss-offline"  # the once tag of the per-query 2PC offline phase (overlapped with an HE prefix)
OBJECTIVES = ("latency", "bytes", "client_seconds")


class NoPlanError(PrivinferError):
    """No plan satisfies the policy (e.g. ReLU layers with neither a dealer nor a dealer-free 2PC allowed)."""


@dataclass(frozen=True)
class Row:
    protocol: str           # he, ss, convert, or a whole-model protocol name
    start: int
    stop: int
    kind_in: str
    kind_out: str
    cost: Cost
    needs: frozenset = frozenset()   # what the policy must allow: "dealer", "client_plaintext", "epsilon"
    once: tuple | None = None        # (tag, Cost): paid once per plan that uses any row with this tag
    info: dict = field(default_factory=dict, compare=False, hash=False)
    offline_s: float = 0.0  # seconds of `cost` (on both sides) that are this row's share of the 2PC offline phase

    @property
    def label(self) -> str:
        span = f"{self.start}" if self.stop - self.start == 1 else f"{self.start}-{self.stop - 1}"
        if self.protocol == "convert":
            return f"convert {self.kind_in}->{self.kind_out} @{self.start}"
        return f"{self.protocol}:{span}"


@dataclass(frozen=True)
class Policy:
    """What the user accepts to give up. Defaults are the strict end: weights stay with the server, no DP
    release, and a dealer (CrypTen's trusted third party, by default run by the server) is allowed.
    `hiding`: "perfect" (default) allows only conversions between ciphertexts and shares that hide perfectly
    (BFV, masks uniform mod t); "statistical" also allows CKKS ones (19-20 bits of statistical hiding)."""
    model_private: bool = True
    epsilon: float | None = None
    trusted_dealer: bool = True
    hiding: str = "perfect"

    def __post_init__(self):
        if self.hiding not in HIDING:
            raise ParameterError(f"hiding must be one of {HIDING}, got {self.hiding!r}")

    def allows(self, row: Row) -> bool:
        if "client_plaintext" in row.needs and self.model_private:
            return False
        if "epsilon" in row.needs and self.epsilon is None:
            return False
        if "dealer" in row.needs and not self.trusted_dealer:
            return False
        if "statistical_hiding" in row.needs and self.hiding == "perfect":
            return False
        return True


def objective_fn(objective: str, network) -> Callable[[Cost], float]:
    if objective == "latency":
        prof = parse_network(network)
        return prof.latency
    if objective == "bytes":
        return lambda c: float(c.bytes_up + c.bytes_down + c.dealer_bytes)
    if objective == "client_seconds":
        return lambda c: float(c.client_s)
    raise ParameterError(f"objective must be one of {OBJECTIVES}, got {objective!r}")


def overlaps(objective: str) -> bool:
    """Whether the offline phase may overlap an HE prefix under this objective (only latency is wall time)."""
    return objective == "latency"


def _value(row: Row, paid: frozenset, f) -> tuple[float, frozenset]:
    v = f(row.cost)
    if row.once is not None and row.once[0] not in paid:
        return v + f(row.once[1]), paid | {row.once[0]}
    return v, paid


def _step(d: float, e: float | None, paid: frozenset, row: Row, f, overlap: bool):
    """The label (d, e, paid) after `row` (see the module docstring); e stays None without overlap."""
    if not overlap:
        w, paid2 = _value(row, paid, f)
        return d + w, None, paid2
    w = f(row.cost)
    if row.once is not None and row.once[0] == OFFLINE and OFFLINE not in paid:
        on = w - row.offline_s  # the offline phase: started with the query, collected before this row
        e2 = f(row.once[1]) + row.offline_s + on
        return max(d, e2 - on) + on, e2, paid | {OFFLINE}
    if e is None:  # still the HE prefix (or a row outside the offline phase's accounting)
        w2, paid2 = _value(row, paid, f)
        return d + w2, None, paid2
    w2, paid2 = _value(row, paid, f)  # a later 2PC row: its tuples join the (maybe still hidden) offline phase
    on = w2 - row.offline_s
    return max(d + on, e + w2), e + w2, paid2


def _check(rows: Sequence[Row]) -> dict[tuple[int, str], list[Row]]:
    by_src: dict[tuple[int, str], list[Row]] = {}
    for r in rows:
        if r.stop < r.start or (r.stop == r.start and r.kind_in == r.kind_out):
            raise ParameterError(f"row {r.label}: a zero-layer row must change the value kind")
        if not 0 <= r.offline_s <= min(r.cost.client_s, r.cost.server_s) + 1e-12:
            raise ParameterError(f"row {r.label}: offline_s must be part of both 2PC parties' seconds")
        by_src.setdefault((r.start, r.kind_in), []).append(r)
    return by_src


def shortest(rows: Sequence[Row], n: int, f: Callable[[Cost], float],
             overlap: bool = False) -> tuple[float, list[Row]]:
    """(objective value, rows in order) of the cheapest path (0, client) -> (n, client); NoPlanError if none.

    A label search over (boundary, kind, paid) with labels (d, e) (module docstring; with `overlap=False`
    every e is None and it is Dijkstra). Every edge weight is >= 0 (seconds, bytes) so it is exact. Rows of
    zero layers (conversions) stay at their boundary; a conversion never leads back to its own kind."""
    by_src = _check(rows)
    start = (0, "client", frozenset())
    settled: dict[tuple, list[tuple[float, float | None]]] = {}
    labels: list[tuple] = [(None, None)]  # label id -> (parent id, row)
    tie = itertools.count()
    heap = [(0.0, 0.0, next(tie), start, None, 0)]

    def dominated(s, d, e) -> bool:
        return any(d0 <= d + 1e-15 and (e0 is None or (e is not None and e0 <= e + 1e-15))
                   for d0, e0 in settled.get(s, ()))

    while heap:
        d, _, _, s, e, lid = heapq.heappop(heap)
        if dominated(s, d, e):
            continue
        settled.setdefault(s, []).append((d, e))
        i, kind, paid = s
        if (i, kind) == (n, "client") and i > 0:
            path = []
            while lid:
                lid, r = labels[lid]
                path.append(r)
            return d, path[::-1]
        for r in by_src.get((i, kind), ()):
            if min(f(r.cost), f(r.once[1]) if r.once else 0.0) < 0:
                raise ParameterError(f"row {r.label} has a negative cost under this objective")
            d2, e2, paid2 = _step(d, e, paid, r, f, overlap)
            t = (r.stop, r.kind_out, paid2)
            if not dominated(t, d2, e2):
                labels.append((lid, r))
                heapq.heappush(heap, (d2, -1.0 if e2 is None else e2, next(tie), t, e2, len(labels) - 1))
    raise NoPlanError("no plan satisfies the policy: no path from the client's input to the client's logits")


def path_value(path: Sequence[Row], f: Callable[[Cost], float], overlap: bool = False) -> float:
    """A whole path's objective value in closed form: the sum of its rows (each once cost paid once); with
    `overlap`, max(P, O) + R where P is the rows before the first 2PC row (the HE prefix), O the offline
    phase (the `ss-offline` once cost + every 2PC row's `offline_s`) and R the rest without their offline parts."""
    if not overlap:
        total, paid = 0.0, frozenset()
        for r in path:
            w, paid = _value(r, paid, f)
            total += w
        return total
    k = next((j for j, r in enumerate(path) if r.once is not None and r.once[0] == OFFLINE), len(path))
    head, tail = path[:k], path[k:]
    prefix = path_value(head, f)
    if not tail:
        return prefix
    offline = f(tail[0].once[1]) + sum(r.offline_s for r in tail)
    rest = path_value(tail, f) - f(tail[0].once[1]) - sum(r.offline_s for r in tail)
    return max(prefix, offline) + rest


def path_latency(path: Sequence[Row], network) -> float:
    """Predicted seconds per query of a plan on `network`: its rows, the offline phase overlapped with an HE
    prefix (what `Plan.predicted_latency_s` and the bench's prediction use)."""
    return path_value(path, parse_network(network).latency, overlap=True)


def brute_force(rows: Sequence[Row], n: int, f: Callable[[Cost], float],
                overlap: bool = False) -> tuple[float, list[Row]]:
    """Every path, enumerated and valued in closed form (`path_value`; exponential: tests on small tables only)."""
    best: tuple[float, list[Row]] | None = None
    by_src: dict[tuple[int, str], list[Row]] = {}
    for r in rows:
        by_src.setdefault((r.start, r.kind_in), []).append(r)

    def walk(i, kind, path, seen):
        nonlocal best
        if (i, kind) == (n, "client") and path:
            total = path_value(path, f, overlap)
            if best is None or total < best[0] - 1e-12:
                best = (total, list(path))
            return
        for r in by_src.get((i, kind), ()):
            key = (r.stop, r.kind_out)
            if key in seen:
                continue
            walk(r.stop, r.kind_out, path + [r], seen | {key})

    walk(0, "client", [], frozenset({(0, "client")}))
    if best is None:
        raise NoPlanError("no plan satisfies the policy")
    return best


def total_cost(path: Iterable[Row]) -> Cost:
    """The plan's cost: its rows in sequence, each `once` cost paid once."""
    total, paid = Cost(), set()
    for r in path:
        total = total + r.cost
        if r.once is not None and r.once[0] not in paid:
            paid.add(r.once[0])
            total = total + r.once[1]
    return total


def choose(rows: Sequence[Row], n: int, policy: Policy, objective: str, network) -> tuple[float, list[Row]]:
    """The best path under `policy` and `objective` (latency on `network`)."""
    allowed = [r for r in rows if policy.allows(r)]
    return shortest(allowed, n, objective_fn(objective, network), overlap=overlaps(objective))


__all__ = ["Row", "Policy", "HIDING", "NoPlanError", "OBJECTIVES", "KINDS", "OFFLINE", "shortest", "brute_force",
           "choose", "total_cost", "objective_fn", "overlaps", "path_value", "path_latency", "NetworkProfile"]
