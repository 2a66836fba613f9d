"""Costs and network profiles: what one piece of a plan spends, and how long that takes on a given link.

Why a module of its own: the search, the explanation and the benchmark's predicted latency must all turn a
cost into seconds the same way. A `Cost` is what one segment (or conversion) of a plan spends per query:
compute seconds on each side, bytes each way, rounds (sequential messages, each paying one RTT), the dealer's
bytes (2PC offline phase, between the server and its dealer: on the same host for a local dealer) and the HE
depth consumed. A `NetworkProfile(rate, rtt)` prices it:

    latency = compute + rounds x RTT + wire bytes / rate

where the 2PC exchange rounds of a piece together add max(0, rounds x RTT - their loopback slack), not rounds x
RTT (`Cost.rounds_s`). Why: `compute` is measured on loopback and already holds every round's loopback wait. A
CrypTen round is a gloo exchange, and gloo sends to a posted receive only, so on a link the party that starts
the round last waits one full RTT (traced on `wan`: 41 ms per round, RTT 40 ms). What it waited on loopback
above the exchange floor (the slack: this virtual machine's wake-up delays, ~0.1-3 ms per round, heavy-tailed)
is replaced by that round trip rather than added to it. Traced per round on a quiet machine (session 9, load
~2 from the measurement's own processes, `benchmarks/results/planner/session9-traces/`): on `lan` (0.8 ms RTT
as delivered) the late party's wait is tight (p25-p75 0.85-1.0 ms on mixed-mnist) where on loopback it was
0.14-1.7 ms, and mixed-mnist's 32 rounds took 47.3 ms on `lan` against 47.2 ms on loopback. Replayed onto `lan`
per query (`round_trace.py --loopback`), session 8's rule (each round alone max(0, RTT - its slack): a long
wait gives back no more than its own RTT) gives mixed-mnist 64.6 ms and this rule 52.4 ms; on minionn-mnist
(145.2 ms measured) 150.1 and 125.5 ms, on cryptonets-mnist (21.3 ms) 17.7 and 16.5 ms: this rule is the
better one where rounds are many and small (mixed-mnist +11 % against +37 %), session 8's where they carry
more bytes (minionn-mnist +3 % against -14 %, cryptonets-mnist -17 % against -23 %).
Which slack: a plan's rows are priced apart (`search.path_value`), and what the counted pieces wait is not what
a query's rounds wait, so every 2PC row is priced with the real engine's slack per round (`engine_time`,
`table.engine_slack_per_round`): each row then adds its rounds x max(0, RTT - slack), and the rows add up to
the query's rule. Without an engine trace the counted samples are used (`rounds_s`: the median over runs of
each run's total). RTT -> 0 gives the loopback figure; a long RTT gives rounds x RTT less the slack. The round's
loopback copy time (its bytes at loopback's cost per byte) is not slack: a link pays for bytes at its own rate.
Request/reply rounds (privinfer's channel, the dealer) have no slack recorded and pay the full RTT.

`compute` is client_s + server_s when the parties take turns (HE: the server evaluates while the client
waits), and max(client_s, server_s) when they compute at the same time (`overlap`: 2PC parties run in
lockstep, and our 2PC figures are wall times of the pair); likewise their wire bytes are the larger direction
(both parties send their shares at once on a full-duplex link), where an HE request and its reply add up
(measured: ss on cryptonets-mnist under `mobile` takes 0.48 s, which one direction at a time, 0.55 s on the
wire alone, cannot do). The built-in profiles are `privinfer.netem`'s
(one table: what the planner predicts is what `privinfer bench --network` emulates).
"""
from __future__ import annotations

import re
import statistics
from dataclasses import dataclass, field, replace

from ..errors import ParameterError
from ..netem import PROFILES as NETEM_PROFILES


@dataclass(frozen=True)
class Cost:
    client_s: float = 0.0
    server_s: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    rounds: int = 0
    depth: int = 0
    dealer_bytes: int = 0
    overlap: bool = False  # client and server compute at the same time (2PC): max, not sum
    wall_s: float | None = None  # set on sums: the compute wall time of the parts, in sequence
    link_bytes: int | None = None  # set on sums: the bytes that occupy the link, in sequence (see `wire`)
    #: 2PC exchange rounds measured on loopback: per round, one sample per timed run of the late party's wait
    #: above the loopback exchange floor and copy time (seconds; `ss_cost.round_slack`). These rounds (the first
    #: len(slack) of `rounds`) add max(0, their count x RTT - their total slack) on a link (`rounds_s`); the
    #: others (request/reply) a full RTT each
    slack: tuple = ()

    def rounds_s(self, rtt_s: float) -> float:
        """Seconds the link's round trips add to this cost's loopback-measured compute (see the module docstring):
        the 2PC rounds with slack samples add max(0, their count x RTT - their total slack), where the total is
        the median over the timed runs of each run's sum (a run slowed by a burst of load neither prices the
        compute nor discounts the rounds; negative samples, waits below the floor, count as 0); a round without
        samples, and every other round, pays the full RTT."""
        measured = [r for r in self.slack if r]
        added = (self.rounds - len(measured)) * rtt_s if self.rounds > len(measured) else 0.0
        if not measured:
            return added
        runs = {len(r) for r in measured}
        if len(runs) == 1:  # one sample per timed run in every round: the runs' totals
            total = statistics.median(sum(max(0.0, r[k]) for r in measured) for k in range(runs.pop()))
        else:  # counts of different runs put together: each round's mean
            total = sum(statistics.fmean(max(0.0, x) for x in r) for r in measured)
        return added + max(0.0, len(measured) * rtt_s - total)

    @property
    def wire(self) -> int:
        """Bytes that take link time: a 2PC exchange sends both ways at once (full duplex: the larger
        direction), a request and its reply take turns (both)."""
        if self.link_bytes is not None:
            return self.link_bytes
        return max(self.bytes_up, self.bytes_down) if self.overlap else self.bytes_up + self.bytes_down

    @property
    def compute_s(self) -> float:
        if self.wall_s is not None:
            return self.wall_s
        return max(self.client_s, self.server_s) if self.overlap else self.client_s + self.server_s

    @property
    def bytes_total(self) -> int:
        return int(self.bytes_up + self.bytes_down)

    def __add__(self, other: "Cost") -> "Cost":
        """Sequential composition (the parts of a plan run one after another). A sum prices its 2PC rounds as one
        piece: the same as its parts when every round has one slack figure (the engine's per round, as the
        planner's rows do), not when parts carry counted samples (a part's excess slack then offsets another's
        rounds); plans price their rows apart (`search.path_value`)."""
        return Cost(client_s=self.client_s + other.client_s, server_s=self.server_s + other.server_s,
                    bytes_up=self.bytes_up + other.bytes_up, bytes_down=self.bytes_down + other.bytes_down,
                    rounds=self.rounds + other.rounds, depth=max(self.depth, other.depth),
                    dealer_bytes=self.dealer_bytes + other.dealer_bytes, wall_s=self.compute_s + other.compute_s,
                    link_bytes=self.wire + other.wire, slack=self.slack + other.slack)

    def scaled(self, k: float) -> "Cost":
        return replace(self, client_s=self.client_s * k, server_s=self.server_s * k,
                       wall_s=None if self.wall_s is None else self.wall_s * k)

    def to_json(self) -> dict:
        return {"client_s": self.client_s, "server_s": self.server_s, "bytes_up": int(self.bytes_up),
                "bytes_down": int(self.bytes_down), "rounds": int(self.rounds), "depth": int(self.depth),
                "dealer_bytes": int(self.dealer_bytes), "overlap": self.overlap, "wall_s": self.wall_s,
                "link_bytes": self.link_bytes, "slack": [list(r) for r in self.slack]}

    @classmethod
    def from_json(cls, d: dict) -> "Cost":
        return cls(**{k: d[k] for k in ("client_s", "server_s", "bytes_up", "bytes_down", "rounds", "depth",
                                         "dealer_bytes", "overlap", "wall_s", "link_bytes") if k in d},
                   slack=tuple(tuple(float(x) for x in r) for r in d.get("slack", ())))


@dataclass(frozen=True)
class NetworkProfile:
    """A link: `rate_mbit` each way (None: unlimited) and `rtt_ms`."""
    name: str
    rate_mbit: float | None
    rtt_ms: float
    extra: dict = field(default_factory=dict, compare=False)

    def transfer_s(self, nbytes: float) -> float:
        return 0.0 if not self.rate_mbit else nbytes * 8 / (self.rate_mbit * 1e6)

    def latency(self, c: Cost) -> float:
        """Seconds per query for cost `c` on this link (see the module docstring)."""
        return c.compute_s + c.rounds_s(self.rtt_ms / 1e3) + self.transfer_s(c.wire)

    def describe(self) -> str:
        rate = "unlimited" if not self.rate_mbit else f"{self.rate_mbit:g} Mbit/s each way"
        return f"{self.name} ({rate}, {self.rtt_ms:g} ms RTT)"


PROFILES = {n: NetworkProfile(n, p.rate_mbit, p.rtt_ms) for n, p in NETEM_PROFILES.items()}
_CUSTOM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(k|m|g)?bit(?:/s)?\s*:\s*(\d+(?:\.\d+)?)\s*ms\s*$", re.I)


def parse_network(spec) -> NetworkProfile:
    """A profile by name (loopback, lan, wan, mobile), a NetworkProfile, or a custom 'RATE:RTT' such as
    '50mbit:20ms' (rates in kbit, mbit or gbit per second)."""
    if isinstance(spec, NetworkProfile):
        return spec
    if not isinstance(spec, str):
        raise ParameterError(f"network must be a profile name or 'RATE:RTT' like '50mbit:20ms', got {spec!r}")
    if spec in PROFILES:
        return PROFILES[spec]
    m = _CUSTOM.match(spec)
    if not m:
        raise ParameterError(f"unknown network {spec!r}: use one of {sorted(PROFILES)} or 'RATE:RTT' like "
                             f"'50mbit:20ms'")
    rate = float(m.group(1)) * {"k": 1e-3, "m": 1.0, "g": 1e3, None: 1e-6}[(m.group(2) or "").lower() or None]
    if rate <= 0:
        raise ParameterError(f"network {spec!r}: the rate must be positive")
    return NetworkProfile(spec.strip(), rate, float(m.group(3)))
