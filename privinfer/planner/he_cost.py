"""What one HE segment of a plan costs: parameters, exact operation counts and bytes, and calibrated seconds.

Why counting instead of timing: an HE segment's time is the sum of its SEAL operations, and which operations
run (products, rotations, rescales, at which level) is fixed by the packing plan, not by the data. So the
planner picks the segment's parameters exactly as the engine does (`select_params`, the same arguments as
`protocols/he` for the logit-returning segment and `hybrid/he_seg` for a masked one), builds the same
`LatencyPlan`, runs the compiled plan's control flow on a counting backend that tracks each value's level, and
prices each (operation, level) with the calibrated per-prime cost of that operation at that ring size N
(`calibrate.py`). Bytes are exact: one seeded input ciphertext and one result at the output level are
serialized with a fresh key of the segment's own parameters. Client encrypt/decrypt and the server's
load/re-randomize are timed on that same context (milliseconds) once per parameter set and cached with the
counts (`table.py`), so a plan does not change from one call to the next.

Selecting parameters is the slow part (a large first convolution takes tens of seconds at N=32768); results
are cached on disk by the sub-graph's digest (`table.py`: `<cache root>/planner/counts/`).
"""
from __future__ import annotations

import time

import numpy as np

from ..errors import ParameterError, UnsupportedLayerError
from ..model.ir import Graph
from .cost import Cost

HE_OPS = ("mul_plain", "add", "add_plain", "rotate", "rescale", "mod_switch", "square", "multiply")


class _LevelCounter:
    """A backend whose values are levels: counts (operation, level) pairs, no arithmetic."""

    def __init__(self, slots: int):
        self.slots, self.counts = slots, {}

    def _n(self, op, level):
        key = f"{op}@{level}"
        self.counts[key] = self.counts.get(key, 0) + 1

    def encode(self, values, scale, level):
        return level

    def mul_plain(self, ct, pt):
        self._n("mul_plain", ct)
        return ct

    def add(self, a, b):
        self._n("add", max(a, b))
        return max(a, b)

    def add_plain(self, ct, pt):
        self._n("add_plain", ct)
        return ct

    def rotate(self, ct, k):
        self._n("rotate", ct)
        return ct

    def rescale(self, ct):
        self._n("rescale", ct)
        return ct + 1

    def mod_switch(self, ct):
        self._n("mod_switch", ct)
        return ct + 1

    def square(self, ct):
        self._n("square", ct)
        return ct

    def multiply(self, a, b):
        self._n("multiply", max(a, b))
        return max(a, b)


def _masked_params(program):
    """The masked segment's parameters, chosen as `hybrid/he_seg._MaskedSegment` chooses them."""
    from ..protocols.he.params import DEFAULT_VALUE_BITS, select_params
    from ..protocols.hybrid.he_seg import HIDING_TRY_BITS, MIN_SCALE_BITS
    err = None
    for extra in HIDING_TRY_BITS:
        try:
            return select_params(program, "latency", value_bits=DEFAULT_VALUE_BITS + extra, min_scale_bits=MIN_SCALE_BITS)
        except ParameterError as e:
            err = e
    raise err


def segment_structure(graph: Graph, start: int, stop: int, last: bool, circuit_privacy: str = "flood") -> dict:
    """Parameters, input ciphertexts and (operation, level) counts of HE segment [start, stop) (data-free)."""
    from ..protocols.he import _value_bits_for_range
    from ..protocols.he.latency import CompiledPlan, plan_latency
    from ..protocols.he.params import mask_options, select_params
    from ..protocols.he.program import build_program
    sub = graph.slice(start, stop)
    bad = [l.kind for l in sub.layers if l.kind not in ("conv2d", "linear", "avgpool2d", "flatten", "poly")]
    if bad:
        raise UnsupportedLayerError(f"HE cannot run {bad}")
    program = build_program(sub)
    if last:
        vb = _value_bits_for_range(sub, None, False)
        params = select_params(program, "latency", value_bits=vb, mask=True, flood=circuit_privacy == "flood")
        kw = mask_options(params)
    else:
        params, kw = _masked_params(program), {}
    plan = plan_latency(program, params.slots)
    be = _LevelCounter(params.slots)
    compiled = CompiledPlan(plan, program, be, **kw)
    compiled.evaluate([0] * plan.input.n_ct, backend=be)
    return {"params": params.to_json(), "n_ct": int(plan.input.n_ct), "ops": be.counts,
            "out_level": int(compiled.final_level), "rotation_keys": len(plan.rotation_steps),
            "depth": int(params.depth)}


_IO: dict = {}


def params_io(params_json: dict) -> dict:
    """Exact wire sizes and timed client/server per-ciphertext work for one parameter set (memoized)."""
    key = (params_json["N"], tuple(params_json["coeff_mod_bit_sizes"]))
    if key in _IO:
        return _IO[key]
    import tenseal.sealapi as seal
    from ..protocols.he import rerandomize
    from ..protocols.he.context import CKKSContext
    from ..protocols.he.params import HEParams
    p = HEParams.from_json(params_json)
    ctx = CKKSContext.create(p)
    ctx.encryptor = seal.Encryptor(ctx.seal, ctx.public_key)
    x = np.zeros(ctx.slots)
    reps = 3
    t0 = time.perf_counter()
    for _ in range(reps):
        blob_in = ctx.encrypt(x, 2.0 ** p.input_scale_bits)
    t_enc = (time.perf_counter() - t0) / reps
    t0 = time.perf_counter()
    for _ in range(reps):
        ct = ctx.ct_from_bytes(blob_in)
    t_load = (time.perf_counter() - t0) / reps
    out = {"in_bytes": len(blob_in), "t_enc": t_enc, "t_load": t_load, "levels": {}}
    for level in range(len(ctx.parms_ids)):
        c = ctx.ct_from_bytes(blob_in)
        c.scale = 2.0 ** 20  # a zero vector: any scale that every level can hold
        while ctx.parms_ids.index(c.parms_id()) < level:
            ctx.evaluator.mod_switch_to_next_inplace(c)
        t0 = time.perf_counter()
        rerandomize(ctx, c, 0.0)
        blob = ctx.ct_to_bytes(c)
        t_out = time.perf_counter() - t0
        t0 = time.perf_counter()
        ctx.decrypt(blob)
        out["levels"][str(level)] = {"out_bytes": len(blob), "t_rerand": t_out, "t_dec": time.perf_counter() - t0}
    _IO[key] = out
    return out


def data_primes(params_json: dict, level: int) -> int:
    """Primes of a ciphertext at `level` (the special prime excluded)."""
    return len(params_json["coeff_mod_bit_sizes"]) - 1 - level


def segment_cost(struct: dict, cal: dict, *, from_shares: bool, to_shares: bool, io: dict | None = None) -> Cost:
    """The per-query cost of one HE segment, conversions at both ends included (see `convert.py`):
    the client encrypts n_ct ciphertexts (of z = x + r from shares), the server loads them (and subtracts the
    gathered mask), evaluates, masks or floods and re-randomizes one result, the client decrypts it."""
    p = struct["params"]
    N = str(p["N"])
    he_cal = cal["he"].get(N) or cal["he"][max(cal["he"], key=lambda k: int(k))]
    io = io or params_io(p)
    levels = {int(k): v for k, v in io["levels"].items()}  # JSON turns the level keys into strings
    out_io = levels[min(struct["out_level"], len(levels) - 1)]
    server = 0.0
    for key, n in struct["ops"].items():
        op, level = key.split("@")
        server += n * he_cal[op] * max(1, data_primes(p, int(level)))
    n_ct = struct["n_ct"]
    server += n_ct * io["t_load"] + out_io["t_rerand"]
    top = data_primes(p, 0)
    if from_shares:  # encode the gathered mask and subtract it from every input ciphertext
        server += n_ct * (he_cal["encode"] + he_cal["add_plain"]) * top
    if to_shares:  # encode and add a uniform mask in every slot
        server += (he_cal["encode"] + he_cal["add_plain"]) * max(1, data_primes(p, struct["out_level"]))
    client = n_ct * io["t_enc"] + out_io["t_dec"]
    return Cost(client_s=client, server_s=server, bytes_up=n_ct * io["in_bytes"], bytes_down=out_io["out_bytes"],
                rounds=1, depth=int(struct["depth"]))
