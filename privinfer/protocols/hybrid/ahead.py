"""Prefetch for a hybrid session (client option `prefetch`, default off): after answering a query, both sides
prepare the next query's single-use material, so that the next query finds it ready.

Why an option: the material is for a query that may never come (made for nothing), and it is made for the
batch size just served (another batch finishes it and replaces it: never used). Why at all: the 2PC offline
phase (dealer tuples, both parties' generation) and the BFV segments' pads (a fresh encryption of zero plus the
flood, and the output masks) do not depend on the input, so a session with gaps between queries can take them
off the query's path; `ss` has the same option for its offline phase (`ss/sides.py`).

What is made ahead, and why none of it is ever used twice:
  * the 2PC offline phase for batch B: the server STARTS it right after its answer (`_offline_start`: one
    message to the client, the parties' `generate`, the dealer's batch); the client reads that message right
    after the result and starts its party's generation. The next query of batch B collects it
    (`OfflineCollect`) instead of starting one; a query of another batch first collects it (keeping the
    dealer and the parties' pipes in step) and starts its own, whose `generate` replaces the tuple queue.
  * each ss -> BFV hand-over's mask r (`MaskAhead`): drawn once, handed to exactly one query, then dropped.
  * each BFV segment's pads, masks and unmasking plaintexts for r (`BFVSegmentStep.precompute`): `_take`
    drops them when a query takes them; the 2PC's idle-time precompute does not remake them.
On an error the session closes (its processes and everything prepared go with it); a failure while
prefetching after an answer leaves that answer standing and is raised by the next query. As in `ss`, a query
whose tuples were made ahead runs even if the dealer died since (its online phase needs no dealer).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ...errors import ParameterError, PrivinferError
from ...transport import Channel


def prefetch_flag(value) -> bool:
    """The option as given by the API (bool), the CLI (0/1, read as JSON) or a string ("0", "1", "true", ...)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("0", "1", "true", "false", "yes", "no", "on", "off"):
        return value.strip().lower() in ("1", "true", "yes", "on")
    raise ParameterError(f"prefetch must be a boolean (true/false, 1/0), got {value!r}")


class MaskAhead:
    """The mask r of one ss -> BFV hand-over: drawn fresh for each query, or drawn ahead by `prefetch` (then
    handed to the next query of that batch, once: a query of another batch gets a fresh one)."""

    def __init__(self, draw: Callable[[int], np.ndarray]):
        self.draw, self.ahead = draw, None

    def __call__(self, batch: int) -> np.ndarray:
        r, self.ahead = self.ahead, None
        return r if r is not None and r.shape[0] == batch else self.draw(batch)

    def prefetch(self, batch: int) -> np.ndarray:
        self.ahead = self.draw(batch)
        return self.ahead

    def drop(self) -> None:
        self.ahead = None


class _OfflineAhead:
    """The 2PC offline phase of one side, maybe started ahead: `start(ch, B)` in place of starting it in
    `prepare`."""

    def __init__(self, ss):
        self.ss = ss
        self.batch: int | None = None  # the batch whose offline phase was started ahead (None: none pending)

    def start(self, ch: Channel, batch: int) -> None:
        ahead, self.batch = self.batch, None
        if self.ss is None or ahead == batch:
            return
        if ahead is not None:  # made for another batch: finished (the pipes stay in step), then replaced
            self.ss._offline_collect(ch, ahead)
        self.ss._offline_start(ch, batch)


class ServerAhead(_OfflineAhead):
    """The server's half: `after(ch, B)` once the answer is sent."""

    def __init__(self, ss, chain: list):
        from ..ss.steps import SSSegment
        from .steps import BFVSegmentStep
        super().__init__(ss)
        #: [(SSSegment or None, BFVSegmentStep)]: each BFV segment's step with the ss step before it (its mask)
        self.pairs = [(a if isinstance(a, SSSegment) else None, b) for a, b in zip([None] + list(chain), chain)
                      if isinstance(b, BFVSegmentStep)]

    def after(self, ch: Channel, batch: int) -> None:
        if self.ss is not None:
            self.ss._offline_start(ch, batch)  # first: the client and the dealer work while the pads are made
            self.batch = batch
        for ss_step, bfv_step in self.pairs:
            mask = getattr(ss_step, "mask", None)
            r = mask.prefetch(batch) if isinstance(mask, MaskAhead) else None
            bfv_step.precompute(batch, r)

    def drop(self) -> None:
        self.batch = None
        for ss_step, bfv_step in self.pairs:
            if isinstance(getattr(ss_step, "mask", None), MaskAhead):
                ss_step.mask.drop()
            bfv_step.drop()


class ClientAhead(_OfflineAhead):
    """The client's half: `after(ch, B)` once the result is in (reads the server's offline message, starts its
    party's generation)."""

    def __init__(self, ss):
        super().__init__(ss)
        self.error: PrivinferError | None = None

    def start(self, ch: Channel, batch: int) -> None:
        if self.error is not None:  # the prefetch after the last answer failed: this query cannot run
            e, self.error = self.error, None
            raise e
        super().start(ch, batch)

    def after(self, ch: Channel, batch: int) -> None:
        try:
            self.ss._offline_start(ch, batch)
            self.batch = batch
        except PrivinferError as e:  # the answer already in hand stands; the next query reports this
            self.error = e
