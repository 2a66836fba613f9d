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


def _value(row: Row, paid: frozenset, f) -> tuple[float, frozenset]:
    v = f(row.cost)
    if row.once is not None and row.once[0] not in paid:
        return v + f(row.once[1]), paid | {row.once[0]}
    return v, paid


def shortest(rows: Sequence[Row], n: int, f: Callable[[Cost], float]) -> tuple[float, list[Row]]:
    """(objective value, rows in order) of the cheapest path (0, client) -> (n, client); NoPlanError if none.

    Dijkstra over (boundary, kind, paid); every edge weight is >= 0 (seconds, bytes) so it is exact. Rows of
    zero layers (conversions) stay at their boundary; a conversion never leads back to its own kind."""
    by_src: dict[tuple[int, str], list[Row]] = {}
    for r in rows:
        if r.stop < r.start or (r.stop == r.start and r.kind_in == r.kind_out):
            raise ParameterError(f"row {r.label}: a zero-layer row must change the value kind")
        by_src.setdefault((r.start, r.kind_in), []).append(r)
    start = (0, "client", frozenset())
    best = {start: 0.0}
    back: dict = {}
    tie = itertools.count()
    heap = [(0.0, next(tie), start)]
    while heap:
        d, _, s = heapq.heappop(heap)
        if d > best.get(s, float("inf")):
            continue
        i, kind, paid = s
        if (i, kind) == (n, "client") and i > 0:
            path = []
            while s in back:
                s, r = back[s]
                path.append(r)
            return d, path[::-1]
        for r in by_src.get((i, kind), ()):
            w, paid2 = _value(r, paid, f)
            if w < 0:
                raise ParameterError(f"row {r.label} has a negative cost under this objective")
            t = (r.stop, r.kind_out, paid2)
            if d + w < best.get(t, float("inf")):
                best[t] = d + w
                back[t] = (s, r)
                heapq.heappush(heap, (d + w, next(tie), t))
    raise NoPlanError("no plan satisfies the policy: no path from the client's input to the client's logits")


def brute_force(rows: Sequence[Row], n: int, f: Callable[[Cost], float]) -> tuple[float, list[Row]]:
    """Every path, enumerated (exponential: tests on small tables only)."""
    best: tuple[float, list[Row]] | None = None
    by_src: dict[tuple[int, str], list[Row]] = {}
    for r in rows:
        by_src.setdefault((r.start, r.kind_in), []).append(r)

    def walk(i, kind, path, seen):
        nonlocal best
        if (i, kind) == (n, "client") and path:
            total, paid = 0.0, frozenset()
            for r in path:
                w, paid = _value(r, paid, f)
                total += w
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
    return shortest(allowed, n, objective_fn(objective, network))


__all__ = ["Row", "Policy", "HIDING", "NoPlanError", "OBJECTIVES", "KINDS", "shortest", "brute_force", "choose",
           "total_cost", "objective_fn", "NetworkProfile"]
