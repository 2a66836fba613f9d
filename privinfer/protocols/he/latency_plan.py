"""The data of a latency plan: slot layouts, its steps (gather, diagonal, activation) and `LatencyPlan`.

Why apart: `latency.py` chooses a plan, `latency_eval.py` compiles and runs one, `convpack.py` adds channel-packed
steps; all of them share these types (the packing itself is explained in `latency.py`'s docstring).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from ...errors import ShapeError

ZERO, GARBAGE = -1, -2
# rough costs (ms) at N=8192 on this class of machine, for choosing between strategies
C_ROT, C_MUL, C_CT = 3.0, 0.45, 6.0


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n - 1).bit_length())


# --- layouts ---------------------------------------------------------------------------------------
@dataclass
class Layout:
    period: int
    idx: np.ndarray

    def tiled(self, P: int) -> np.ndarray:
        if P % self.period:
            raise ShapeError(f"period {P} is not a multiple of {self.period}")
        return np.tile(self.idx, P // self.period)

    def compressed(self) -> "Layout":
        p = 1
        while p < self.period:
            if np.array_equal(self.idx, np.tile(self.idx[:p], self.period // p)):
                return Layout(p, self.idx[:p].copy())
            p *= 2
        return self

    def first_slot(self, n: int) -> np.ndarray:
        """The first slot holding each element 0..n-1 (raises if one is missing)."""
        pos = np.full(n, -1, dtype=np.int64)
        vals = self.idx
        where = np.flatnonzero(vals >= 0)
        order = where[::-1]
        pos[vals[order]] = order  # later writes (smaller slots) win
        if (pos < 0).any():
            raise ShapeError(f"layout lacks elements {np.flatnonzero(pos < 0)[:10].tolist()}")
        return pos

    @property
    def has_garbage(self) -> bool:
        return bool((self.idx == GARBAGE).any())


# --- plan steps ------------------------------------------------------------------------------------
@dataclass
class GatherStep:
    """First segment, client-side gather: n_ct ciphertexts, products, one rescale, log2(g) folds."""
    block: int
    groups: int
    gather: np.ndarray  # (n_ct, slots) input element per slot, -1 = zero
    rows: np.ndarray    # (n_ct, slots) output row whose weight sits in this slot, -1 = none
    fold: list
    out: Layout
    kind = "gather"

    @property
    def n_ct(self) -> int:
        return int(self.gather.shape[0])


@dataclass
class DiagStep:
    """A segment by the generalized diagonal method with baby-step giant-step rotations."""
    n_out = 1  # output ciphertexts
    strategy: str
    period: int
    n1: int
    n2: int
    rows: np.ndarray   # (J, period) output row per (diagonal j, slot), -1 = zero
    cols: np.ndarray   # (J, period) input element per (diagonal j, slot)
    fold: list
    out: Layout
    cost: float = 0.0
    #: 0: babies by powers of two (b from b - highbit(b)); 1: a chain of single steps (b from b - 1, key 1 only),
    #: set by `rotkeys.limit_keys` when the babies are 1..n1-1 (same rotations, fewer keys)
    baby_step: int = 0
    kind = "diag"

    @property
    def J(self) -> int:
        return int(self.rows.shape[0])

    def used_j(self) -> list[int]:
        return [int(j) for j in np.flatnonzero((self.rows >= 0).any(axis=1))]

    def babies(self) -> list[int]:
        return sorted({j % self.n1 for j in self.used_j()})

    def giants(self) -> list[int]:
        return sorted({j // self.n1 for j in self.used_j()})

    def baby_chain(self) -> list[tuple[int, int, int]]:
        """[(baby, from baby, rotation step)] in evaluation order."""
        if self.baby_step:
            return [(b, b - 1, 1) for b in range(1, max(self.babies(), default=0) + 1)]
        return [(b, b - (1 << (b.bit_length() - 1)), 1 << (b.bit_length() - 1)) for b in _baby_order(self.babies())]


@dataclass
class ActStep:
    kind: str
    const: float = 0.0


@dataclass
class InputSpec:
    """What the client sends: `gathers[c][s]` = input element for slot s of ciphertext c (-1 = zero)."""
    gathers: np.ndarray

    @property
    def n_ct(self) -> int:
        return int(self.gathers.shape[0])


@dataclass
class LatencyPlan:
    slots: int
    input: InputSpec
    steps: list = field(default_factory=list)
    n_out: int = 0
    #: rotation steps that get no Galois key of their own: step -> the keyed steps that compose it
    key_paths: dict = field(default_factory=dict)
    #: a channel-packed plan's decisions ({"grid": i, "segments": [option per segment]}, public: a function of
    #: the public structure); the server sends them in WELCOME and the client replays them (`convpack_plan`)
    choices: dict | None = None

    @property
    def out(self) -> Layout:
        return [s for s in self.steps if not isinstance(s, ActStep)][-1].out

    def output_slots(self) -> np.ndarray:
        return self.out.first_slot(self.n_out)

    @property
    def rotation_steps(self) -> list[int]:
        """The Galois keys the client generates: every rotation the evaluation performs is one of these."""
        raw = set(self.raw_rotation_steps())
        for r, path in self.key_paths.items():
            raw.discard(r)
            raw.update(path)
        return sorted(raw)

    def raw_rotation_steps(self) -> list[int]:
        steps: set[int] = set()
        for st in self.steps:
            if getattr(st, "kind", "") == "rot":
                steps.update(st.key_steps(self.slots))
            if isinstance(st, (GatherStep, DiagStep)):
                steps.update(int(f) for f in st.fold)
            if isinstance(st, DiagStep):
                steps.update(step for _, _, step in st.baby_chain())
                if max(st.giants(), default=0) > 0:
                    steps.add(st.n1)
        return sorted(s % self.slots for s in steps if s % self.slots)

    def n_rotations(self) -> int:
        n = 0
        for st in self.steps:
            if getattr(st, "kind", "") == "rot":
                n += st.n_rotations()
            elif isinstance(st, GatherStep):
                n += len(st.fold)
            elif isinstance(st, DiagStep):
                n += len(st.baby_chain()) + max(st.giants(), default=0) + len(st.fold)
        return n

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"slots": self.slots, "n_out": self.n_out, "rot": self.rotation_steps}).encode())
        if self.key_paths:
            h.update(json.dumps(sorted((int(k), list(map(int, v))) for k, v in self.key_paths.items())).encode())
        h.update(np.ascontiguousarray(self.input.gathers, dtype=np.int64).tobytes())
        for st in self.steps:
            if isinstance(st, ActStep):
                h.update(f"act:{st.kind}:{st.const!r}".encode())
            elif getattr(st, "kind", "") == "rot":
                h.update(st.digest_bytes())
            elif isinstance(st, GatherStep):
                h.update(np.ascontiguousarray(st.rows, dtype=np.int64).tobytes())
                h.update(f"gather:{st.block}:{st.groups}:{st.fold}".encode())
            else:
                h.update(np.ascontiguousarray(st.rows, dtype=np.int64).tobytes())
                h.update(np.ascontiguousarray(st.cols, dtype=np.int64).tobytes())
                h.update(f"diag:{st.period}:{st.n1}:{st.n2}:{st.fold}".encode())
                if st.baby_step:
                    h.update(f"babies:{st.baby_step}".encode())
        return h.hexdigest()[:32]

    def describe(self) -> str:
        rows = [f"latency plan: {self.slots} slots, {self.input.n_ct} input ciphertext(s), "
                f"{self.n_rotations()} rotations, Galois steps {self.rotation_steps}"]
        for st in self.steps:
            if getattr(st, "kind", "") == "rot":
                rows.append(f"  rot: {st.n_in * st.merge} -> {st.n_out} ct (merge {st.merge}), {len(st.keys)} "
                            f"plaintexts, {st.n_rotations()} rotations (n1={st.n1})")
            elif isinstance(st, GatherStep):
                rows.append(f"  gather: block {st.block}, {st.groups} taps/ct, {st.n_ct} ct, fold {st.fold}")
            elif isinstance(st, DiagStep):
                rows.append(f"  diag[{st.strategy}]: period {st.period}, {len(st.used_j())} diagonals "
                            f"(n1={st.n1}, n2={st.n2}), fold {st.fold}, out period {st.out.period}")
            else:
                rows.append(f"  {st.kind}")
        return "\n".join(rows)


def _baby_order(babies: list[int]) -> list[int]:
    """All babies that must be computed (closure under b -> b - highbit(b)), excluding 0, ascending."""
    need: set[int] = set()
    for b in babies:
        while b:
            need.add(b)
            b -= 1 << (b.bit_length() - 1)
    return sorted(need)
