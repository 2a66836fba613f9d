"""The one execution engine: values of a kind, steps from one kind to another, one loop on each side.

Why: every protocol used to carry its own query loop, and `hybrid` a second one around the `he` and `ss`
machinery, so the same HE evaluation ran through two code paths. Here a query is a *plan of steps*: segments
(a contiguous range of layers under one protocol) and conversions (a change of the value's kind, which is
where the wire traffic happens). Each side runs the same list, step by step, over one channel:

    client   Value(plain@client, x) ─ step ─▶ Value(kind, client's half) ─ step ─▶ … ─▶ Value(plain@client, logits)
    server   Value(plain@client, —) ─ step ─▶ Value(kind, server's half) ─ step ─▶ … ─▶ Value(plain@client, —)

A value's kind says who holds what; each side's `Value.data` is its own half:

    kind           client holds               server holds              what the server learns
    plain@client   the plaintext              nothing                   nothing
    cipher         nothing (its secret key)   ciphertexts under the     nothing (CKKS, 128-bit)
                                              client's key
    shares         its additive share         its additive share        nothing beyond the mask's hiding
    noisy@server   nothing                    DP-noised features        an epsilon-DP release
    plain@server   nothing                    the plaintext             everything (no input privacy)

`plain` is  upload (plain@client -> plain@server), server layers, download;
`he`    is  encrypt (-> cipher), HE segment (cipher -> cipher), decrypt (-> plain@client);
`ss`    is  share (-> shares, no traffic), SS segment (shares -> plain@client: revealed to the client);
`noisy` is  client layers (plain@client -> plain@client), DP release (-> noisy@server), server layers,
            download. `hybrid` builds longer chains of the same step classes from its plan.

A step declares the kind it `accepts` and the kind it `produces` (fixed when the plan is built); `check_chain`
refuses a plan whose kinds do not meet before anything runs, and the loop checks each value again. Resources
that serve a whole session (keys, a CrypTen group and its dealer) are not steps: a protocol's sides set them
up once and may `prepare` them per query (the 2PC offline phase) before the loop runs.
"""
from __future__ import annotations

import numbers
import time
from dataclasses import dataclass
from enum import Enum
from typing import Any, Sequence

import numpy as np

from ..errors import ProtocolError, ShapeError
from ..model.reference import run_reference
from ..transport import Channel
from .base import ClientSide, ServerSide


class Kind(str, Enum):
    """Where a value that crosses a step boundary lives, and in what form."""
    PLAIN_CLIENT = "plain@client"
    CIPHER = "cipher"
    SHARES = "shares"
    NOISY_SERVER = "noisy@server"
    PLAIN_SERVER = "plain@server"

    def __str__(self) -> str:
        return self.value


@dataclass
class Value:
    """One side's half of a batch of values: its kind, the batch size, and what this side holds."""
    kind: Kind
    batch: int
    data: Any = None

    @classmethod
    def plain(cls, x: np.ndarray) -> "Value":
        """The client's input: plaintext at the client."""
        return cls(Kind.PLAIN_CLIENT, int(x.shape[0]), x)

    @classmethod
    def expected(cls, batch: int) -> "Value":
        """The server's view of the client's input: plaintext at the client (the server holds nothing)."""
        return cls(Kind.PLAIN_CLIENT, int(batch), None)

    def to(self, kind: Kind, data: Any = None) -> "Value":
        return Value(kind, self.batch, data)


class Step:
    """One step of a plan on one side: `run(ch, value) -> value`, from `accepts` to `produces`.

    A step may set `self.timing` (a dict of numbers) in `run`: the client's loop sums them per query into
    the session's `query_timing` (offline/online split, traffic outside the channel, dealer bytes).
    """
    accepts: Kind = Kind.PLAIN_CLIENT
    produces: Kind = Kind.PLAIN_CLIENT
    timing: dict | None = None

    def run(self, ch: Channel, value: Value) -> Value:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{type(self).__name__}({self.accepts} -> {self.produces})"


def check_chain(steps: Sequence[Step], start: Kind = Kind.PLAIN_CLIENT, end: Kind = Kind.PLAIN_CLIENT) -> None:
    """Refuse a plan whose kinds do not connect, naming the step at fault."""
    kind = start
    for i, s in enumerate(steps):
        if s.accepts != kind:
            raise ProtocolError(f"plan step {i} {s.describe()} cannot take a value of kind {kind}")
        kind = s.produces
    if kind != end:
        raise ProtocolError(f"the plan ends with a value of kind {kind}, not {end}")


def run_steps(ch: Channel, steps: Sequence[Step], value: Value) -> tuple[Value, dict]:
    """THE loop: run every step in order; returns the final value and the steps' summed timing."""
    if not steps:
        raise ProtocolError("this side has no plan to run (its set-up has not run)")
    timing: dict = {}
    for s in steps:
        if value.kind != s.accepts:
            raise ProtocolError(f"{s.describe()} was handed a value of kind {value.kind}")
        s.timing = None
        out = s.run(ch, value)
        if out.kind != s.produces or out.batch != value.batch:
            raise ProtocolError(f"{s.describe()} produced {out.kind} (batch {out.batch}), expected {s.produces} "
                                f"(batch {value.batch})")
        if s.timing:
            _add(timing, s.timing)
        value = out
    return value, timing


def _add(acc: dict, t: dict) -> None:
    for k, v in t.items():
        if isinstance(v, numbers.Number) and not isinstance(v, bool) and isinstance(acc.get(k, 0), numbers.Number):
            acc[k] = acc.get(k, 0) + v
        else:
            acc[k] = v


class EngineServer(ServerSide):
    """A server side that runs its plan's steps for every query. Subclasses fill `chain` (after set-up if
    they need the client's keys) and may override `prepare` (per-query work before the loop), `after` (once
    the answer is sent) and `abort` (a query failed); the loop itself is this class's, for every protocol."""
    #: the plan's steps on this side, in order (set in __init__, or in setup once keys exist)
    chain: Sequence[Step] = ()

    def prepare(self, ch: Channel, meta: dict) -> None:
        """Per query, before the loop (limits, the 2PC offline phase); `meta` is the client's QUERY."""

    def after(self, ch: Channel, meta: dict) -> None:
        """Per query, once the answer is sent (hybrid's `prefetch`: the next query's single-use material)."""

    def abort(self) -> None:
        """A query failed (before or after its answer): drop whatever was prepared for later queries."""

    def query(self, ch: Channel, meta: dict) -> None:
        try:
            self.prepare(ch, meta)
            run_steps(ch, self.chain, Value.expected(int(meta["batch"])))
            self.after(ch, meta)
        except BaseException:
            self.abort()
            raise


class EngineClient(ClientSide):
    """A client side that runs its plan's steps for every query and returns the plaintext logits."""
    #: the plan's steps on this side, in order (set in __init__, or in setup once keys exist)
    chain: Sequence[Step] = ()

    def prepare(self, ch: Channel, batch: int) -> dict:
        """Per query, before the loop; returns timing to add to the query's record."""
        return {}

    def after(self, ch: Channel, batch: int) -> None:
        """Per query, once the result is in (hybrid's `prefetch`: start the next query's offline phase)."""

    def finish_timing(self, timing: dict, elapsed_s: float) -> dict | None:
        """The query's `query_timing` from the summed step timings (None: the session uses the latency)."""
        return timing or None

    def query(self, ch: Channel, x: np.ndarray) -> np.ndarray:
        t0 = time.perf_counter()
        pre = self.prepare(ch, int(x.shape[0]))
        out, timing = run_steps(ch, self.chain, Value.plain(x))
        if pre:
            _add(timing, pre)
        self.query_timing = self.finish_timing(timing, time.perf_counter() - t0)
        self.after(ch, int(x.shape[0]))
        return out.data


# --- the plaintext steps every protocol may use -------------------------------------------------------

class Upload(Step):
    """plain@client -> plain@server (or noisy@server, for a DP release the client made before): the client
    sends its half as float32, the server checks the shape (batch, *shape) and that every value is finite."""

    def __init__(self, shape: Sequence[int], client: bool, produces: Kind = Kind.PLAIN_SERVER, prepare=None,
                 what: str = "input"):
        self.shape, self.client, self.produces, self.what = tuple(int(s) for s in shape), client, produces, what
        self.prepare = prepare  # client: x -> what leaves (the DP release); None: x itself

    def run(self, ch: Channel, value: Value) -> Value:
        if self.client:
            x = value.data if self.prepare is None else self.prepare(value.data)
            ch.send_tensor(np.asarray(x).astype(np.float32))
            return value.to(self.produces)
        x = ch.recv_tensor()
        if x.shape != (value.batch, *self.shape):
            raise ShapeError(f"{self.what} of shape {x.shape} does not match (batch={value.batch}, "
                             f"{', '.join(map(str, self.shape))})")
        if x.dtype.kind != "f" or not np.all(np.isfinite(x)):
            raise ShapeError(f"{self.what} must be finite floats")
        return value.to(self.produces, x.astype(np.float64))


class Download(Step):
    """plain@server or noisy@server -> plain@client: the server sends the values (float64), the client checks
    their shape."""

    def __init__(self, shape: Sequence[int], client: bool, accepts: Kind = Kind.PLAIN_SERVER):
        self.shape, self.client, self.accepts = tuple(int(s) for s in shape), client, accepts

    def run(self, ch: Channel, value: Value) -> Value:
        if not self.client:
            ch.send_tensor(np.asarray(value.data).astype(np.float64))
            return value.to(Kind.PLAIN_CLIENT)
        out = ch.recv_tensor()
        if out.shape != (value.batch, *self.shape):
            raise ProtocolError(f"result of shape {out.shape}, expected {(value.batch, *self.shape)}")
        return value.to(Kind.PLAIN_CLIENT, out)


class Layers(Step):
    """Layers [start, stop) in plaintext by the reference executor, where the value already is in the clear:
    at the client (a client prefix: those layers' weights are the client's to see) or at the server (plain
    or DP-noised features; post-processing keeps a DP release DP). The kind does not change."""

    def __init__(self, graph, start: int, stop: int, kind: Kind, holder: bool):
        self.graph, self.start, self.stop = graph, start, stop
        self.accepts = self.produces = kind
        self.holder = holder  # True on the side that holds the value (runs the layers); False: nothing to do

    def run(self, ch: Channel, value: Value) -> Value:
        if not self.holder:
            return value
        return value.to(self.produces, run_reference(self.graph, value.data, start=self.start, stop=self.stop))

    def describe(self) -> str:
        return f"Layers[{self.start}:{self.stop}]({self.accepts})"
