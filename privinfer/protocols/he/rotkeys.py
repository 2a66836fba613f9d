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
Then `jump_babies` may add one key back (JUMP_KEYS), n1/2, for dense layers' chains of single-step babies: the
same rotations, but the HE helper's share of such a step no longer recomputes the first half of the chain.
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
#: one key more than that for `jump_babies` (minionn-mnist-he: a 7th key, 3.6 MB more, 28.9 MiB = 30.3e6 bytes in
#: all, against 25.4 MiB)
JUMP_KEYS = 1
#: ... for chains of at least 2 * JUMP_MIN - 1 babies: on a shorter chain the helper saves fewer rotations than a
#: key's worth (and keys 2 and 4 stay out of the plans, as the single-step chains intend)
JUMP_MIN = 8


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
    jump_babies(plan)
    return plan


def _shareable(st, slots: int):
    """The `RotStep` whose terms the HE helper would share (a diagonal step's view), or None."""
    from .latency import DiagStep
    from .latency_par import diag_view
    if isinstance(st, DiagStep):
        return diag_view(st, slots) if st.baby_step == 1 else None
    return st if getattr(st, "kind", "") == "rot" else None


def jump_babies(plan: LatencyPlan) -> None:
    """Baby chains of single steps 1..n (a dense layer's, key 1 only) take their multiples of n1/2 by that key
    instead, where this lowers the slower side of the helper's best share (`latency_par.best_split`) and the
    key is one the plan has, or one more (up to MAX_GALOIS_KEYS + JUMP_KEYS). Why: the same number of
    rotations, but the helper's share from n1/2 up no longer recomputes babies 1..n1/2-1 (minionn-mnist-he:
    FC1's and FC2's chains of 15, ~20 % less on the slower side of each)."""
    import dataclasses
    from .latency_par import best_split
    keys, gains = set(plan.rotation_steps), {}
    for i, st in enumerate(plan.steps):
        view = _shareable(st, plan.slots)
        d = int(getattr(st, "n1", 0)) // 2
        if view is None or d < JUMP_MIN or d in plan.key_paths or st.baby_jump:
            continue
        if any({s for _, _, s in view.baby_chain(c)} != {1} or len(view.baby_chain(c)) < d
               for c in range(view.n_in)):
            continue
        trial = dataclasses.replace(st, baby_jump=d)
        tview = _shareable(trial, plan.slots)
        if tview is None:
            continue
        before, after = best_split(view)[1], best_split(tview)[1]
        if after < before:
            gains.setdefault(d, []).append((i, trial))
    for d, trials in sorted(gains.items()):
        if d not in keys and len(keys) >= MAX_GALOIS_KEYS + JUMP_KEYS:
            continue
        keys.add(d)
        for i, trial in trials:
            plan.steps[i] = trial


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
        new = dataclasses.replace(st, n1=n1, n2=max(j // n1 for j in st.used_j()) + 1, baby_step=0, baby_jump=0)
        _chain_babies(new)
        return new
    if isinstance(st, RotStep) and (st.keys[:, 2] >= 0).all():
        j = st.keys[:, 2] * st.n1 + st.keys[:, 3]
        keys = st.keys.copy()
        keys[:, 2], keys[:, 3] = j // n1, j % n1
        return dataclasses.replace(st, n1=n1, keys=keys, baby_jump=0)
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
