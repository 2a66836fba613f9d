"""Calibration: time this machine's kernels once (`privinfer profile`), write a JSON cost table, read it back.

Why: the cost model counts operations exactly (HE: per operation and level; 2PC: bytes, rounds, dealer
elements) but seconds per operation depend on the machine. `privinfer profile` measures:

* HE: SEAL's multiply_plain, add, add_plain, rotate (key switching), rescale, mod_switch, square and multiply
  (with relinearization) and encode, at every ring size the planner may pick (N = 4096 ... 32768), as seconds
  per data prime (SEAL's cost is linear in the primes of the operand's level);
* BFV (N = 8192, the only audited BFV ring, `protocols/he/bfv.py`): seconds per operation as
  `bfv_eval.BFVBackend` runs them (products of NTT-form ciphertexts and plaintexts, NTT-form and
  coefficient-form additions, plaintext additions, row rotations, and the NTT transforms between forms);
* 2PC: a real `ss` session (CrypTen, local dealer) on two zoo networks of different size: the per-query offline
  phase (dealer batch) as fixed seconds + seconds per dealer element; and one on a network that computes
  nothing (a Flatten): the per-segment overhead of the parties (dispatch and reveal);
* dealer-free 2PC (`cheetah`, SPU), only for the networks named by `privinfer profile --model M --cheetah`:
  one measured session per network (`cheetah_cost.py`). A re-profile keeps those measurements.

The table goes to `<cache root>/planner/calibration.json` (`zoo.store.cache_root()`). Without it the planner
uses the shipped `defaults.json` (measured on the project's 2-core reference machine) and prints one warning
line. Layer-level 2PC timings are not machine constants but per-shape measurements: `ss_cost.py` takes them.
"""
from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from ..errors import ParameterError
from ..zoo.store import cache_root

VERSION = 1
DEFAULTS = Path(__file__).with_name("defaults.json")
#: ring size -> primes used for the timing (data primes, then the special prime), all within 128-bit bounds
RINGS = {4096: (36, 36, 37), 8192: (60, 40, 40, 60), 16384: (60, 40, 40, 40, 40, 60), 32768: (60, 40, 40, 40, 40, 60)}
REQUIRED = {"he", "ss"}
HE_OPS = frozenset({"mul_plain", "add", "add_plain", "rotate", "rescale", "mod_switch", "square", "multiply", "encode"})
BFV_OPS = frozenset({"mul_plain", "add", "add_plain", "rotate", "to_ntt", "from_ntt"})
CHEETAH_FIELDS = ("latency_s", "bytes_up", "bytes_down", "rounds")
#: a 2PC session whose median is more than this times the fastest session's ran with both parties on one core
SESSION_OUTLIER = 1.3
_warned: set = set()


def calibration_path() -> Path:
    return cache_root() / "planner" / "calibration.json"


def _seconds(v) -> bool:
    """A timing: a finite, non-negative number (NaN would never relax in the search; a bool is not a time)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0


def validate(table: dict, where: str) -> dict:
    """Typed errors for anything but a well-formed table: every timing the planner reads is checked here."""
    if (not isinstance(table, dict) or table.get("version") != VERSION or not REQUIRED <= set(table)
            or not isinstance(table["he"], dict) or not isinstance(table["ss"], dict)
            or not isinstance(table.get("bfv", {}), dict)):
        raise ParameterError(f"{where} is not a privinfer calibration table (version {VERSION}); rerun "
                             f"`privinfer profile`")
    for N, ops in table["he"].items():
        if not isinstance(ops, dict):
            raise ParameterError(f"{where}: HE timings for N={N} are not a table")
        missing = HE_OPS - set(ops)
        if missing:
            raise ParameterError(f"{where}: HE timings for N={N} lack {sorted(missing)}")
        bad = sorted(k for k in HE_OPS if not _seconds(ops[k]))
        if bad:
            raise ParameterError(f"{where}: HE timings for N={N}: {bad} are not finite non-negative seconds")
    for k in ("offline_fixed_s", "offline_s_per_dealer_element", "segment_overhead_s"):
        if not _seconds(table["ss"].get(k)):
            raise ParameterError(f"{where}: 2PC constant {k!r} missing or not finite non-negative seconds")
    bad = sorted(k for k, v in table.get("bfv", {}).items() if k in BFV_OPS and not _seconds(v))
    if bad:
        raise ParameterError(f"{where}: BFV timings {bad} are not finite non-negative seconds")
    if not isinstance(table.get("cheetah", {}), dict):
        raise ParameterError(f"{where}: cheetah measurements are not a table")
    for digest, m in table.get("cheetah", {}).items():
        if not isinstance(m, dict) or not all(_seconds(m.get(k)) for k in CHEETAH_FIELDS):
            raise ParameterError(f"{where}: cheetah measurement {str(digest)[:24]} lacks finite non-negative "
                                 f"{list(CHEETAH_FIELDS)}")
    return table


def carry_cheetah(base: dict, path: str | Path | None) -> dict:
    """The shipped cheetah entries, plus the ones measured on this machine in the table at `path` (kept across
    re-profiles: they cost a minute each and depend on the network, not on the kernels re-timed)."""
    out = dict(base.get("cheetah", {}))
    p = Path(path) if path is not None else calibration_path()
    if p.exists():
        try:
            old = json.loads(p.read_text()).get("cheetah", {})
        except (json.JSONDecodeError, AttributeError):
            old = {}
        if isinstance(old, dict):
            out.update({k: v for k, v in old.items() if isinstance(v, dict) and v.get("measured_here")})
    return out


def _shipped_cheetah(table: dict) -> dict:
    """A table made before a shipped cheetah entry was corrected takes the shipped one (this machine's own
    measurements, marked `measured_here`, win)."""
    shipped = json.loads(DEFAULTS.read_text()).get("cheetah", {})
    mine = table.get("cheetah", {})
    merged = {**mine, **{k: v for k, v in shipped.items() if not (mine.get(k) or {}).get("measured_here")}}
    return {**table, "cheetah": merged}


def load_calibration(path: str | Path | None = None, warn: bool = True) -> dict:
    """The table at `path` (default: the cache's); the shipped defaults, with a one-line warning, if absent."""
    p = Path(path) if path is not None else calibration_path()
    if path is not None and not p.exists():  # a path the user named: a typo must not fall back silently
        raise ParameterError(f"calibration file {p} not found (run `privinfer profile -o {p}`)")
    if p.exists():
        try:
            table = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ParameterError(f"{p}: not JSON ({e}); rerun `privinfer profile`") from None
        return {**_shipped_cheetah(_with_bfv(validate(table, str(p)))), "source": str(p)}
    if warn and str(p) not in _warned:
        _warned.add(str(p))
        print(f"privinfer: warning: no calibration at {p}; using shipped defaults (run `privinfer profile`)",
              file=sys.stderr, flush=True)
    return {**validate(json.loads(DEFAULTS.read_text()), str(DEFAULTS)), "source": "shipped defaults"}


def _with_bfv(table: dict) -> dict:
    """A table from before BFV was priced takes the shipped BFV kernel times."""
    if "bfv" not in table:
        table = {**table, "bfv": json.loads(DEFAULTS.read_text())["bfv"]}
    return table


def save_calibration(table: dict, path: str | Path | None = None) -> Path:
    p = Path(path) if path is not None else calibration_path()
    validate(table, "calibration")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps({k: v for k, v in table.items() if k != "source"}, indent=2) + "\n")
    return p


def _bar(done: int, total: int, what: str) -> None:
    w = 30
    k = int(w * done / total)
    print(f"\r[{'#' * k}{'.' * (w - k)}] {done}/{total} {what:<40}", end="" if done < total else "\n",
          file=sys.stderr, flush=True)


def _median_s(fn, reps: int) -> float:
    """Median wall seconds of `reps` calls of fn (the calibration's one timing rule)."""
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(sorted(ts)[len(ts) // 2])


def time_he(N: int, bits: tuple, reps: int = 5) -> dict:
    """Seconds per data prime of each SEAL operation at ring size N (top level, median of `reps`)."""
    import numpy as np
    import tenseal.sealapi as seal
    from ..protocols.he.context import CKKSContext, dump, galois_elt, load_into
    from ..protocols.he.params import HEParams
    p = HEParams(N=N, coeff_mod_bit_sizes=tuple(bits), scale_bits=bits[1], depth=len(bits) - 2, slots=N // 2,
                 input_scale_bits=bits[1])
    ctx = CKKSContext.create(p)
    kg = ctx._kg
    gk = load_into(seal.GaloisKeys(), ctx.seal, dump(kg.create_galois_keys([galois_elt(1, N)])), "galois keys")
    rk = load_into(seal.RelinKeys(), ctx.seal, dump(kg.create_relin_keys()), "relin keys")
    ev = ctx.evaluator
    x = np.random.default_rng(0).uniform(-1, 1, ctx.slots)
    ct = ctx.ct_from_bytes(ctx.encrypt(x, 2.0 ** 30))
    pt = ctx.encode(x, 2.0 ** 30, 0)
    primes = len(bits) - 1

    def med(fn):
        return _median_s(fn, reps) / primes

    def fresh():
        return ctx.ct_from_bytes(ctx.encrypt(x, 2.0 ** 30))

    out = seal.Ciphertext()
    res = {"mul_plain": med(lambda: ev.multiply_plain(ct, pt, out)),
           "add": med(lambda: ev.add(ct, ct, out)),
           "add_plain": med(lambda: ev.add_plain(ct, pt, out)),
           "rotate": med(lambda: ev.rotate_vector(ct, 1, gk, out)),
           "encode": med(lambda: ctx.encode(x, 2.0 ** 30, 0))}
    cts = [fresh() for _ in range(reps)]
    it = iter(cts)
    res["rescale"] = med(lambda: ev.rescale_to_next_inplace(next(it)))
    it = iter([fresh() for _ in range(reps)])
    res["mod_switch"] = med(lambda: ev.mod_switch_to_next_inplace(next(it)))

    def sq():
        ev.square(ct, out)
        ev.relinearize_inplace(out, rk)
    res["square"] = med(sq)

    def mul():
        ev.multiply(ct, ct, out)
        ev.relinearize_inplace(out, rk)
    res["multiply"] = med(mul)
    return res


def time_bfv(reps: int = 5) -> dict:
    """Seconds per BFV operation at N = 8192 (median of `reps`), as `bfv_eval.BFVBackend` performs them."""
    import numpy as np
    import tenseal.sealapi as seal
    from ..protocols.he.bfv import BFVContext, choose_params
    params = choose_params(2.0 ** 38)
    ctx = BFVContext.create(params, [1])
    server = ctx.keyed()
    server.load_public(ctx.public_blobs(), [1])
    ev = server.evaluator
    v = np.arange(ctx.N, dtype=np.float64) % 1000
    ct = server.ct_from_bytes(ctx.encrypt(v), level=0)
    pt = server.encode(v)
    pt_ntt = seal.Plaintext()
    ev.transform_to_ntt(pt, server.parms_ids[0], pt_ntt)
    ct_ntt = seal.Ciphertext()
    ev.transform_to_ntt(ct, ct_ntt)
    out = seal.Ciphertext()

    def med(fn):
        return _median_s(fn, reps)

    return {"mul_plain": med(lambda: ev.multiply_plain(ct_ntt, pt_ntt, out)),
            "add": med(lambda: ev.add(ct, ct, out)),
            "add_plain": med(lambda: ev.add_plain(ct, pt, out)),
            "rotate": med(lambda: ev.rotate_rows(ct, 1, server.galois_keys, out)),
            "to_ntt": med(lambda: ev.transform_to_ntt(ct, out)),
            "from_ntt": med(lambda: ev.transform_from_ntt(ct_ntt, out)),
            "N": ctx.N}


def time_ss(models=("cryptonets-mnist", "minionn-mnist"), samples: int = 8) -> dict:
    """The 2PC engine's per-query constants from real `ss` sessions (local dealer) on two zoo networks:
    offline = fixed + per dealer element (a line through the two), and the per-call overhead."""
    import numpy as np
    from .. import zoo
    from ..affinity import enabled, pin_parties
    from ..session import PrivateSession
    points = []
    for name in models:
        g = zoo.load_model(name)
        X, _ = zoo.load_dataset(name, "test")
        with PrivateSession(g, "ss", warn=False) as s:
            if enabled():  # `privinfer profile --pin`, as `privinfer bench --pin` runs them (affinity.py)
                pin_parties([os.getpid()])
            offs, dealer = [], []
            for i in range(samples + 1):
                s.infer(X[i:i + 1])
                if i:
                    offs.append(s.stats.last.offline_s)
                    dealer.append(s.stats.last.bytes_dealer)
        points.append((float(np.median(dealer)) / 8, float(np.median(offs))))
    (e0, t0), (e1, t1) = sorted(points)
    slope = max(0.0, (t1 - t0) / (e1 - e0)) if e1 > e0 else 0.0
    return {"offline_fixed_s": max(0.0, t0 - slope * e0), "offline_s_per_dealer_element": slope,
            "segment_overhead_s": time_segment_overhead(zoo.load_model(models[0]).input_shape, samples),
            "points": [{"model": m, "dealer_elements": e, "offline_s": t} for m, (e, t) in zip(models, points)]}


def time_ss_online(graph, samples: int = 8, sessions: int = 1) -> dict:
    """The online seconds of `graph` run whole by the real `ss` engine (client view: dispatch, input sharing, the
    layers, the reveal): the median of `samples` queries on random inputs in the graph's input range (2PC time
    does not depend on the values), per session; `online_s` is the mean of the sessions' medians that are within
    SESSION_OUTLIER of the fastest one.

    Why more than one session: the scheduler sometimes places both parties on one core for a whole session, and
    every round then waits ~10x longer (README, "Why loopback used to miss"; under load one session here took
    42 ms and the next 12 ms on the same network); a session that much slower than another is that placement,
    not the network."""
    import numpy as np
    from ..affinity import enabled, pin_parties
    from ..session import PrivateSession
    lo, hi = graph.input_range if graph.input_range is not None else (0.0, 1.0)
    rng = np.random.default_rng(0)
    meds = []
    for _ in range(sessions):
        on = []
        with PrivateSession(graph, "ss", warn=False) as s:
            if enabled():  # `privinfer profile --pin`, as `privinfer bench --pin` runs them (affinity.py)
                pin_parties([os.getpid()])
            for i in range(samples + 1):
                s.infer(rng.uniform(lo, hi, (1, *graph.input_shape)))
                if i:
                    on.append(s.stats.last.online_s)
        meds.append(float(np.median(on)))
    return {"online_s": combine_sessions(meds), "sessions": meds, "samples": samples}


def combine_sessions(medians: list[float]) -> float:
    """The mean of the sessions' medians within SESSION_OUTLIER of the fastest (see `time_ss_online`)."""
    kept = [m for m in medians if m <= SESSION_OUTLIER * min(medians)]
    return sum(kept) / len(kept)


def time_segment_overhead(input_shape: tuple, samples: int = 8) -> float:
    """The online seconds of an `ss` query that computes nothing: a network of one Flatten (no 2PC operation;
    the client shares its input, the parties reveal the result). What every 2PC segment pays besides its
    counted layers (`ss_cost.reveal_cost`): the call to both party processes and the reveal.

    Why measured and not shipped: the default (2 ms) was a guess; on session 8's idle machine this query took
    0.9-1.2 ms, and on a 15 ms network (cryptonets-mnist) the difference is 5 % of the prediction."""
    from ..model.ir import Graph
    from ..model.layers import Flatten
    return time_ss_online(Graph(tuple(input_shape), [Flatten()], input_range=(0.0, 1.0)), samples)["online_s"]


def machine_load() -> dict:
    """The 1-minute load average and the CPU count, kept with every timing the planner makes.

    Why: the 2PC timings are wall times of several processes on this machine's cores; on the shared 2-core
    machine a calibration made at load average 4-5 priced mixed-mnist's `ss` at 0.23 s where it then ran in
    0.08 s at load 3 (planner-acc session). A timing cannot be corrected for the load (it is not one CPU
    loop), but the table says under what load it was made, and `loaded` warns about it."""
    try:
        la = os.getloadavg()[0]
    except OSError:
        la = None
    return {"load_average_1min": None if la is None else round(la, 2), "cpus": os.cpu_count()}


def loaded(load: dict | None) -> bool:
    """A timing made while other jobs held more than half of the cores."""
    la, cpus = (load or {}).get("load_average_1min"), (load or {}).get("cpus") or 1
    return la is not None and la > 0.5 * cpus + 1


def warn_if_loaded(load: dict, what: str) -> None:
    if loaded(load):
        print(f"privinfer: warning: {what} timed at load average {load['load_average_1min']} on {load['cpus']} "
              f"CPUs: other jobs' share is in these timings; re-run `privinfer profile` on a quiet machine",
              file=sys.stderr, flush=True)


def run_profile(path: str | Path | None = None, rings=tuple(RINGS), ss: bool = True, progress: bool = True) -> Path:
    """Measure everything (under 2 minutes on 2 cores) and write the table; returns its path."""
    base = json.loads(DEFAULTS.read_text())
    steps = len(rings) + 1 + (1 if ss else 0)
    table = {"version": VERSION, "machine": {"python": platform.python_version(), "platform": platform.platform(),
                                             "processor": platform.processor()},
             "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "he": {}, "ss": dict(base["ss"]),
             "cheetah": carry_cheetah(base, path)}
    t_start = time.perf_counter()
    table["load"] = {"start": machine_load()}
    from ..affinity import enabled
    table["parties_pinned"] = enabled()  # `privinfer profile --pin`: measure with `privinfer bench --pin` too
    for i, N in enumerate(rings):
        if progress:
            _bar(i, steps, f"HE kernels at N={N}")
        table["he"][str(N)] = time_he(N, RINGS[N])
    if progress:
        _bar(len(rings), steps, "BFV kernels at N=8192")
    table["bfv"] = time_bfv()
    if ss:
        if progress:
            _bar(len(rings) + 1, steps, "2PC sessions (cryptonets, minionn, an empty network)")
        table["ss"].update(time_ss())
        table["ss"]["source"] = ("offline constants and the per-segment overhead measured by privinfer profile "
                                 "(time_ss, time_segment_overhead)")
    if progress:
        _bar(steps, steps, f"done in {time.perf_counter() - t_start:.0f} s")
    table["seconds"] = round(time.perf_counter() - t_start, 1)
    table["load"]["end"] = machine_load()
    warn_if_loaded(max(table["load"].values(), key=lambda v: v["load_average_1min"] or 0), "the calibration was")
    return save_calibration(table, path)
