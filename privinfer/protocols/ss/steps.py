"""The `ss` protocol's steps in the engine (`protocols/engine.py`): share, then an SS segment.

Why a module of its own: `SSSegment` is the one step that runs layers under 2PC, in `ss` alone (the whole
graph, revealed to the client) and in every ss segment of a `hybrid` plan (from shares, revealed to the
client in the clear or masked). The 2PC itself runs in this side's CrypTen party process; the step hands
the party this side's additive share and gets back what the segment reveals to it. Who runs the party is
the step's `runner` (client: `run_segment(ch, k, own) -> (y, timing)`; server:
`run_segment(ch, k, batch, own, mask)`): the `ss` session's worker (whole graph, in chunks, with
the offline phase in between: `ss/sides.py`) or the hybrid session's segment party (`hybrid/`).
"""
from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ...transport import Channel
from ..engine import Kind, Step, Value


class SSShare(Step):
    """plain@client -> shares: the client's share is its input, the server's is zero. No traffic: each party
    inputs its share into the CrypTen group inside the segment (a fresh sharing of each)."""
    accepts, produces = Kind.PLAIN_CLIENT, Kind.SHARES

    def __init__(self, client: bool):
        self.client = client

    def run(self, ch: Channel, value: Value) -> Value:
        return value.to(Kind.SHARES, value.data if self.client else None)


class SSSegment(Step):
    """shares -> plain@client (the result revealed to the client) or shares (revealed to the client as
    y + r, r a fresh mask from the server, which keeps -r as its share: `protocols/convert.py` states the
    hiding). `mask(batch)` (server only) draws r; None reveals in the clear."""
    accepts = Kind.SHARES

    def __init__(self, runner, client: bool, k: int = 0, start: int = 0, stop: int | None = None,
                 produces: Kind = Kind.PLAIN_CLIENT, mask: Optional[Callable[[int], np.ndarray]] = None):
        self.runner, self.client, self.k, self.start, self.stop = runner, client, k, start, stop
        self.produces, self.mask = produces, mask

    def run(self, ch: Channel, value: Value) -> Value:
        if self.client:
            y, self.timing = self.runner.run_segment(ch, self.k, value.data)
            return value.to(self.produces, y)
        r = self.mask(value.batch) if self.mask is not None else None
        self.runner.run_segment(ch, self.k, value.batch, value.data, r)
        return value.to(self.produces, None if r is None else -r)

    def describe(self) -> str:
        return f"SSSegment[{self.start}:{self.stop}]({self.accepts} -> {self.produces})"
