"""Fewer Galois keys: rotations by rarely used steps are composed from the keys that remain.

Why: at N=16384 every Galois key is ~4.8 MB on the wire and ~0.3 s of client key generation, while a rotation
costs ~15-40 ms per image on this class of machine; a key used once or twice per image (a fold by 4096, say) is
cheaper as two rotations by 2048. `limit_keys` counts the rotations a plan performs per image by step (running
its control flow on a backend that does no arithmetic), then greedily drops the key whose rotations are the
cheapest to compose from the others (shortest paths in Z_slots), while that costs at most
MAX_EXTRA_ROTATIONS_PER_KEY more rotations per image. The plan records `key_paths` (step -> keyed steps); its
`rotation_steps` -- the keys the client generates -- are then exactly those the evaluation uses, and
`ComposedRotations` performs each composed rotation as its path. Beyond that threshold, keys are still dropped
(cheapest first) while the plan needs more than MAX_GALOIS_KEYS: the key upload is part of every session's set-up.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the HE helper process imports this module without torch
    from .latency_plan import LatencyPlan
    from .program import Program

#: a Galois key is dropped (its rotations composed from other keys) when that adds at most this many
#: rotations per image: a key at N=16384 is ~4.8 MB and ~0.3 s of key generation, a rotation ~15-40 ms here
MAX_EXTRA_ROTATIONS_PER_KEY = 3
#: and keys are dropped, cheapest first whatever they cost, down to this many: 6 Galois keys at N=16384 with 6
#: primes (3.6 MB each, + 3.6 MB relinearization + 1.4 MB public key) keep a client's key upload under 30 MB
MAX_GALOIS_KEYS = 6


class _CountingBackend:
    """Runs a plan's control flow without arithmetic, counting the rotations by step."""

    def __init__(self, slots: int):
        self.slots, self.count = slots, {}

    def encode(self, values, scale, level):
        return 0

    def rotate(self, ct, k):
        k = int(k) % self.slots
        self.count[k] = self.count.get(k, 0) + 1
        return 0

    def __getattr__(self, name):  # mul_plain, add, add_plain, rescale, square, multiply, mod_switch
        return lambda *a: 0


def _shortest_paths(keys: set[int], slots: int, limit: int) -> dict[int, list[int]]:
    """For every step reachable with at most `limit` rotations by `keys`: the shortest list of keys."""
    paths = {0: []}
    frontier = [0]
    for _ in range(limit):
        nxt = []
        for r in frontier:
            for k in sorted(keys):
                t = (r + k) % slots
                if t not in paths:
                    paths[t] = paths[r] + [k]
                    nxt.append(t)
        frontier = nxt
    return paths


def limit_keys(plan: LatencyPlan, prog: Program) -> LatencyPlan:
    """Drop the Galois keys whose rotations are cheap to compose from the others (greedy: the key whose
    removal adds the fewest rotations per image first, while that is <= MAX_EXTRA_ROTATIONS_PER_KEY).
    The plan's `rotation_steps` then lists exactly the keys the evaluation uses."""
    from .latency import CompiledPlan
    for st in plan.steps:
        _chain_babies(st)
    _share_giant_keys(plan)
    be = _CountingBackend(plan.slots)
    CompiledPlan(plan, prog, be).evaluate([0] * plan.input.n_ct)
    uses = be.count
    keys = set(uses)
    removed: dict[int, list[int]] = {}
    while len(keys) > 1:
        best = None
        for k in sorted(keys):
            rest = keys - {k}
            paths = _shortest_paths(rest, plan.slots, MAX_EXTRA_ROTATIONS_PER_KEY + 1)
            mine = [r for r in [k] + [r for r, p in removed.items() if k in p]]
            if any(r not in paths for r in mine):
                continue
            extra = sum(uses.get(r, 0) * (len(paths[r]) - len(removed.get(r, [r]))) for r in mine)
            if best is None or extra < best[0]:
                best = (extra, k, {r: paths[r] for r in mine})
        if best is None or (best[0] > MAX_EXTRA_ROTATIONS_PER_KEY and len(keys) <= MAX_GALOIS_KEYS):
            break
        keys.discard(best[1])
        removed.update(best[2])
    plan.key_paths = {int(r): [int(v) for v in p] for r, p in removed.items()}
    return plan


def _chain_babies(st) -> None:
    """A diagonal step's babies 1..n1-1 as a chain of single steps: as many rotations, keys {1} only."""
    from .latency import DiagStep
    nz = [b for b in st.babies() if b] if isinstance(st, DiagStep) else []
    if nz and nz == list(range(1, max(nz) + 1)):
        st.baby_step = 1


def _resplit(st, n1: int):
    """`st` with giant step n1 instead (same products and plaintext slots, another baby/giant split of every
    shift j = g * n1 + b), or None when its giants are not all non-negative (cyclic Horner by n1 only)."""
    from .convpack import RotStep
    from .latency import DiagStep
    if isinstance(st, DiagStep):
        new = dataclasses.replace(st, n1=n1, n2=max(j // n1 for j in st.used_j()) + 1, baby_step=0)
        _chain_babies(new)
        return new
    if isinstance(st, RotStep) and (st.keys[:, 2] >= 0).all():
        j = st.keys[:, 2] * st.n1 + st.keys[:, 3]
        keys = st.keys.copy()
        keys[:, 2], keys[:, 3] = j // n1, j % n1
        return dataclasses.replace(st, n1=n1, keys=keys)
    return None


def _share_giant_keys(plan: LatencyPlan) -> None:
    """Where the steps whose giant step is k could use 2k or k/2 instead -- a key another step needs anyway --
    at most 2 more rotations each, re-split them so that the key k is not needed at all (minionn-mnist-he: the
    dense layers' giants by 16, the convolutions' row stride, instead of 8: one key fewer, and no rotation by
    16 composed of two by 8 in the expensive top levels)."""
    for k in sorted(set(plan.raw_rotation_steps())):
        users = [i for i, st in enumerate(plan.steps) if getattr(st, "kind", "") in ("rot", "diag") and st.n1 == k]
        if not users:
            continue
        before, n_before, steps = set(plan.raw_rotation_steps()), plan.n_rotations(), list(plan.steps)
        for k2 in (2 * k, k // 2):
            if not 2 <= k2 < plan.slots or k2 not in before:
                continue
            trial = [_resplit(plan.steps[i], k2) for i in users]
            if any(t is None for t in trial):
                continue
            for i, t in zip(users, trial):
                plan.steps[i] = t
            if len(set(plan.raw_rotation_steps())) < len(before) and \
                    plan.n_rotations() <= n_before + 2 * len(users):
                break
            plan.steps = list(steps)


class ComposedRotations:
    """A backend view whose `rotate` composes the steps that have no key of their own (`key_paths`)."""

    def __init__(self, be, paths: dict, slots: int):
        self._be, self._paths, self._slots = be, paths, slots

    def __getattr__(self, name):
        return getattr(self._be, name)

    def rotate(self, ct, k):
        for s in self._paths.get(int(k) % self._slots, (int(k),)):
            ct = self._be.rotate(ct, s)
        return ct
