"""The candidate table of one network: every row the search may use, with its cost, cached per network.

Why here: the rows are where the engines meet the planner. Today they are what the code can execute:

* `ss` pieces (shares -> shares): each layer, and each ReLU+MaxPool pair, counted on real CrypTen parties
  (`ss_cost.py`); they need a dealer (policy `trusted_dealer`);
* `he` segments (he_in -> he_out) over every range of layers HE can run, priced at the parameters the hybrid
  engine would pick for them (`he_cost.py`): a segment that ends the plan floods and returns logits, any
  other one leaves masked (HE -> shares);
* `he` segments in BFV (bfv_in -> bfv_out, or the logits) for every LINEAR-ONLY range inside a hybrid plan:
  `hybrid` (hiding="best") runs such a segment in BFV with perfectly hiding hand-overs, so its CKKS row is
  replaced by the BFV one (`bfv_cost.py`); only where BFV cannot hold the values (the engine falls back to
  CKKS) does the CKKS row stay. The 2PC side of the BFV hand-overs (the mod-t reduce before, the lift after:
  one secure comparison each) is counted on CrypTen parties (`ss_cost.count_pieces(handovers=...)`);
* conversions at layer boundaries (client -> shares and client -> he_in at layer 0, shares -> he_in and
  he_out -> shares anywhere, shares -> client and he_out -> client at the end);
* whole-model protocols (client -> client): `cheetah` (dealer-free 2PC; a measured cost from the calibration
  table, when it has one for this network) and `noisy` with each split (the client runs layers [0, k) in the
  clear: it needs `model_private=False` and an `epsilon`).
A path that is all `ss` or one HE segment runs as the whole-model `ss` or `he` protocol (same engine, same
cost); any other path runs as `hybrid` with the plan string.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from ..errors import ParameterError, PrivinferError, UnsupportedLayerError
from ..model.ir import Graph, graph_to_bytes
from ..zoo.store import cache_root
from . import bfv_cost, fused, he_cost, ss_cost
from .calibrate import machine_load, warn_if_loaded
from .cost import Cost
from .plan import PLAN_PROTOCOLS, HE_MAX_POLY_DEGREE
from .search import OFFLINE, Row

CACHE_VERSION = 9  # 9: the engine's slack per exchange round (`engine_slack_per_round`); 8: the engine's rounds traced; 7: the ss engine times the whole network (`engine`, the pieces' scale); 6: the slack less each round's loopback copy time; 5: per-round slack (ss_cost.round_slack); 4: timed round-robin (ss_cost._interleaved); 3: the whole network is timed too (ss_cost.interaction_scale); 2: medians; 1: minima
BFV_VERSION = 3  # the BFV part of the cached counts (added when missing); 3: the lane packing
FUSED_VERSION = 2  # the fused hand-overs of the cached counts (`fused.py`, added when missing); 2: each at its neighbours' t
NOISY_FEATURE_OVERHEAD = 64  # frame and tensor header bytes around the noisy features


def graph_digest(graph: Graph) -> str:
    return hashlib.sha256(graph_to_bytes(graph)).hexdigest()[:24]


def _he_ok(layer) -> bool:
    return layer.kind in PLAN_PROTOCOLS["he"] and not (layer.kind == "poly" and layer.degree > HE_MAX_POLY_DEGREE)


def he_ranges(graph: Graph) -> list[tuple[int, int]]:
    n = len(graph)
    return [(a, b) for a in range(n) for b in range(a + 1, n + 1) if all(_he_ok(l) for l in graph.layers[a:b])]


def _cache_file(graph: Graph) -> Path:
    return cache_root() / "planner" / "counts" / f"{graph_digest(graph)}.json"


def counts(graph: Graph, progress=None, refresh: bool = False) -> dict:
    """The data-free counts of a network: 2PC pieces and HE segment structures (cached on disk).

    The 2PC pieces carry this machine's seconds besides their exact bytes and rounds, so `refresh=True`
    (`privinfer profile --model M`) counts again rather than trusting a cache timed on a busier day."""
    path = _cache_file(graph)
    say = progress or (lambda msg: None)
    if path.exists() and not refresh:
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError:
            data = {}  # a damaged cache file is counted again (and replaced)
        if data.get("version") == CACHE_VERSION:
            if "skipped" in (data.get("engine") or {}) and _engine_enabled():
                data["engine"] = _time_engine(graph, data["ss"], say)  # counted with the engine off: add it
                _write(path, data)
            if _add_io(data, say) | _add_bfv(graph, data, say) | _add_fused(graph, data, say):
                _write(path, data)
            return data
    say("2PC pieces: counting bytes, rounds and dealer tuples on CrypTen parties")
    load = machine_load()
    data = {"version": CACHE_VERSION, "ss": ss_cost.count_pieces(graph), "he": {}}
    say("2PC engine: the whole network in two ss sessions (the pieces' scale)")
    data["engine"] = _time_engine(graph, data["ss"], say)
    data["load"] = {"start": load, "end": machine_load()}
    warn_if_loaded(max(data["load"].values(), key=lambda v: v["load_average_1min"] or 0), "the 2PC pieces were")
    n = len(graph)
    for a, b in he_ranges(graph):
        for last in (b == n,):
            say(f"HE segment {a}-{b - 1}{' (returns logits)' if last else ' (masked)'}: parameters and operations")
            try:
                data["he"][f"{a}-{b}-{int(last)}"] = he_cost.segment_structure(graph, a, b, last)
            except (ParameterError, UnsupportedLayerError) as e:
                data["he"][f"{a}-{b}-{int(last)}"] = {"error": f"{type(e).__name__}: {e}"}
    _add_io(data, say)
    _add_bfv(graph, data, say)
    _add_fused(graph, data, say)
    _write(path, data)
    return data


def _engine_enabled() -> bool:
    return os.environ.get("PRIVINFER_PLANNER_ENGINE", "1") != "0"


def _time_engine(graph: Graph, rows: list[dict], say) -> dict:
    """The real `ss` engine on the whole network, right after its pieces were counted (`engine_time`): its
    online seconds (the pieces' scale) and its rounds' total slack against the floor this counting measured
    (`engine_slack_per_round`). An error entry when the engine cannot run it (said; kept until the network is
    counted again, `privinfer profile --model`, so that a failure that always happens is not paid on every plan;
    the pieces' own figures are used meanwhile). PRIVINFER_PLANNER_ENGINE=0 skips it (the test suite; a later
    `counts` with the engine on adds it to the cached counts)."""
    if not _engine_enabled():
        return {"skipped": "PRIVINFER_PLANNER_ENGINE=0"}
    from .engine_time import slack_total, time_engine
    try:
        eng = time_engine(graph)
    except (PrivinferError, OSError, ValueError, KeyError) as e:
        say(f"the ss engine could not be timed ({type(e).__name__}: {e}); pricing from the pieces alone")
        return {"error": f"{type(e).__name__}: {e}"}
    queries = eng.pop("queries", None)
    if not queries:
        say(f"the ss engine's rounds were not traced ({eng.get('untraced', 'no traced query')}); each 2PC round "
            "is priced with the counted pieces' slack")
    floor = rows[0].get("floor_s", 0.0) if rows else 0.0
    per_byte = rows[0].get("floor_s_per_byte", 0.0) if rows else 0.0
    eng["slack_s"] = slack_total(queries, floor, per_byte) if queries else None
    eng["exchange_rounds"] = len(queries[0]) if queries else None
    return eng


def _engine_whole(data: dict, cal: dict) -> float | None:
    """The engine's online seconds less the per-segment overhead that `ss_cost.reveal_cost` adds back."""
    eng = data.get("engine") or {}
    if not eng.get("online_s"):
        return None
    return max(0.0, float(eng["online_s"]) - float(cal["ss"]["segment_overhead_s"]))


def engine_slack_per_round(data: dict) -> float | None:
    """The real engine's slack per 2PC exchange round: its rounds' total slack per query (median over the traced
    queries) / the exchange rounds of a query. None without an engine trace (the counted pieces' own slack is
    used then). Why one figure per network and not each counted round's: the counted pieces' rounds wait what
    pieces timed alone wait, which is not a query's (session 9, idle: mixed-mnist's counted chain 12-38 ms per
    run, the engine 8.8-21.3 ms per session), and a plan's rows are priced apart (`search.path_value`), so a
    piece whose rounds waited more than its round trips would keep its excess to itself; one slack per round
    makes every 2PC row add rounds x max(0, RTT - slack), and a plan's rows add up to the query's rule."""
    eng = data.get("engine") or {}
    if eng.get("slack_s") is None or not eng.get("exchange_rounds"):
        return None
    return float(eng["slack_s"]) / int(eng["exchange_rounds"])


def _write(path, data: dict) -> None:
    """Atomically: a concurrent session reads the old file or the new one, never half of one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data) + "\n")
    os.replace(tmp, path)


def bfv_ranges(graph: Graph) -> list[tuple[int, int]]:
    """Linear-only ranges that a hybrid plan runs in BFV (the whole model as one segment is the `he` protocol)."""
    from ..protocols.hybrid.bfv_seg import is_linear
    n = len(graph)
    return [(a, b) for a, b in he_ranges(graph) if is_linear(graph, a, b) and (a, b) != (0, n)]


def _add_bfv(graph: Graph, data: dict, say) -> bool:
    """The BFV segments (`bfv_cost.py`) and the 2PC hand-overs next to them, added once to the cached counts."""
    if data.get("bfv_version") == BFV_VERSION:
        return False
    n = len(graph)
    data["bfv"], data["bfv_version"] = {}, BFV_VERSION
    for a, b in bfv_ranges(graph):
        key = f"{a}-{b}-{int(b == n)}"
        say(f"BFV segment {a}-{b - 1}: the engine's segment, counted operations, real bytes")
        try:
            data["bfv"][key] = bfv_cost.segment_structure(graph, a, b, b == n)
        except (ParameterError, UnsupportedLayerError) as e:
            data["bfv"][key] = {"error": f"{type(e).__name__}: {e}"}
    hand = set()
    for key, st in data["bfv"].items():
        if "error" in st:
            continue
        a, b, _ = (int(v) for v in key.split("-"))
        if a > 0:
            hand.add(("reduce", a, st["params"]["t"]))
        if b < n:
            hand.add(("lift", b, st["params"]["t"]))
    # the comparison's cost does not depend on t: one count per (kind, boundary)
    todo = sorted({(k, i): t for k, i, t in hand}.items())
    data["bfv_handovers"] = {}
    if todo:
        say(f"BFV hand-overs: {len(todo)} mod-t lifts / reduces counted on CrypTen parties")
        res = ss_cost.count_pieces(graph, handovers=[(k, [1, *graph.shapes[i]], t) for (k, i), t in todo])
        for ((k, i), _), r in zip(todo, res):
            data["bfv_handovers"][f"{k}-{i}"] = r
    return True


def _add_fused(graph: Graph, data: dict, say) -> bool:
    """The joint hand-over rows (`fused.py`: the engine's own fusion decisions next to BFV segments), counted
    once on CrypTen parties and kept with the counts.

    Each is counted at the plaintext modulus of the BFV segment next to it, as the engine runs it: a lift at
    the t of a segment ending at its start, an opening at the t of one starting at its stop (the lone ReLU
    between two segments, at both). Where several BFV segments (of different t) meet the same boundary,
    every modulus is counted and the row keeps the dearest: the comparison's bytes, rounds and tuples do not
    depend on t (CrypTen's ring is Z_2^64), so only timing noise separates them, and a row must serve every
    segment the DP may put next to it (the value kind `bfv_out` does not say which)."""
    if data.get("fused_version") == FUSED_VERSION and data.get("fused_bfv") == data.get("bfv_version"):
        return False
    n = len(graph)
    ending: dict[int, set] = {}  # boundary -> the t of every BFV segment ending there (a lift follows)
    starting: dict[int, set] = {}  # boundary -> the t of every BFV segment starting there (an opening precedes)
    for k, st in data.get("bfv", {}).items():
        if "error" in st:
            continue
        a, b = (int(v) for v in k.split("-")[:2])
        if b < n:
            ending.setdefault(b, set()).add(int(st["params"]["t"]))
        if a > 0:
            starting.setdefault(a, set()).add(int(st["params"]["t"]))
    todo = fused.fused_handovers(graph, set(ending), set(starting))
    data["fused"], data["fused_version"], data["fused_bfv"] = {}, FUSED_VERSION, data.get("bfv_version")
    jobs = []
    for f in todo:
        t_in = sorted(ending[f["start"]]) if f["kind_in"] == "bfv_out" else [None]
        t_out = sorted(starting[f["stop"]]) if f["kind_out"] == "bfv_in" else [None]
        jobs += [(f, ti, to) for ti in t_in for to in t_out]
    if jobs:
        say(f"fused hand-overs: {len(jobs)} joint comparisons (the engine's fusion, at each neighbour's modulus) "
            f"counted on CrypTen parties")
        res = ss_cost.count_pieces(graph, handovers=[
            (f["kind"], f["shape"], ti if ti is not None else to, f["pool"], to) for f, ti, to in jobs])
        for (f, ti, to), r in zip(jobs, res):
            row = data["fused"].setdefault(f["key"], {**f, "t": [], "s": 0.0, "bytes_up": 0, "bytes_down": 0,
                                                      "rounds": 0, "dealer_elements": 0})
            row["t"].append([ti, to])
            if r["s"] >= row["s"]:  # the dearest count's rounds, with its own slack
                row["slack"] = r.get("slack", [])
            for k in ("s", "bytes_up", "bytes_down", "rounds", "dealer_elements"):
                row[k] = max(row[k], r[k])
    return True


def io_key(params: dict) -> str:
    return f"{params['N']}:{','.join(str(b) for b in params['coeff_mod_bit_sizes'])}"


def _add_io(data: dict, say) -> bool:
    """Wire sizes and per-ciphertext client/server timings of every HE parameter set the segments use, measured
    once and kept with the counts (so that a network's plan is the same every time it is asked for)."""
    io = data.setdefault("he_io", {})
    added = False
    for st in data["he"].values():
        if "params" in st and io_key(st["params"]) not in io:
            say(f"HE parameters N={st['params']['N']}: ciphertext sizes and encrypt/decrypt times")
            io[io_key(st["params"])] = he_cost.params_io(st["params"])
            added = True
    return added


def _size(graph: Graph, i: int) -> int:
    return int(np.prod(graph.shapes[i]))


def build_rows(graph: Graph, cal: dict, data: dict, *, he: bool = True) -> list[Row]:
    """Every candidate row of `graph` (before the policy filter)."""
    n = len(graph)
    rows: list[Row] = []
    once = (OFFLINE, ss_cost.offline_once(cal))
    dealer = frozenset({"dealer"})
    scale = ss_cost.interaction_scale(data["ss"], graph, _engine_whole(data, cal))
    s_bar = engine_slack_per_round(data)
    regular = set(ss_cost.pieces(graph))
    # where the engine always fuses (`fused.py`), the plain hand-over never runs: a lift at i when a fused row
    # leaves bfv_out at i; a mod-t opening at j when one ends in bfv_in at j right after the fused ReLU (or pool)
    fz = data.get("fused", {}).values()
    fused_out = {f["start"] for f in fz if f["kind_in"] == "bfv_out"}
    fused_in = {f["stop"] for f in fz if f["kind_out"] == "bfv_in"}  # (a ReLU before a MaxPool is never HE)
    for p in data["ss"]:
        a, b = p["piece"]
        if (a, b) not in regular:
            continue  # the whole network, timed only for the scale
        rows.append(Row("ss", a, b, "shares", "shares", ss_cost.piece_cost(p, cal, scale, s_bar), dealer, once,
                        {"layers": list(graph.names[a:b])}, offline_s=ss_cost.offline_share_s(p, cal)))
    for i in range(n + 1):
        if i == 0:
            rows.append(Row("convert", 0, 0, "client", "shares", Cost(overlap=True), dealer, once,
                            {"what": "the client inputs its share (no message: CrypTen's zero shares are seeded)",
                             "hiding": "perfect (additive shares)"}))
            rows.append(Row("convert", 0, 0, "client", "he_in", Cost(), info={"what": "the client encrypts (CKKS)",
                                                                            "hiding": "computational (RLWE)"}))
            rows.append(Row("convert", 0, 0, "client", "bfv_in", Cost(), info={"what": "the client encrypts (BFV)",
                                                                             "hiding": "computational (RLWE)"}))
        if 0 < i < n:
            ckks = dealer | {"statistical_hiding"}
            rows.append(Row("convert", i, i, "shares", "he_in", ss_cost.reveal_cost(_size(graph, i), cal), ckks,
                            once, {"what": "2PC reveals x + r to the client (r: the server's mask); the client "
                                           "encrypts it (CKKS), the server subtracts r",
                                   "hiding": "statistical (19-20 mask bits)"}))
            rows.append(Row("convert", i, i, "he_out", "shares", Cost(), ckks, once,
                            {"what": "the server masks every CKKS slot; the client decrypts its share",
                             "hiding": "statistical (19-20 mask bits)"}))
            hand = data.get("bfv_handovers", {})
            if f"reduce-{i}" in hand and i not in fused_in:
                c = ss_cost.piece_cost(hand[f"reduce-{i}"], cal, slack_per_round=s_bar)
                c = c + Cost(client_s=cal["ss"]["segment_overhead_s"], server_s=cal["ss"]["segment_overhead_s"],
                             overlap=True)
                rows.append(Row("convert", i, i, "shares", "bfv_in", c, dealer, once, {
                    "what": "2PC reduces x + h + r mod t (one secure comparison) and opens it to the client; the "
                            "client encrypts it (BFV), the server subtracts h + r", "hiding": "perfect (uniform mod t)"},
                    offline_s=ss_cost.offline_share_s(hand[f"reduce-{i}"], cal)))
            if f"lift-{i}" in hand and i not in fused_out:
                rows.append(Row("convert", i, i, "bfv_out", "shares", ss_cost.piece_cost(hand[f"lift-{i}"], cal, slack_per_round=s_bar),
                                dealer, once, {"what": "the server masks every BFV slot uniformly mod t; the client "
                                               "decrypts its share; 2PC lifts the mod-t shares into its ring (one "
                                               "secure comparison)", "hiding": "perfect (uniform mod t)"},
                                offline_s=ss_cost.offline_share_s(hand[f"lift-{i}"], cal)))
        if i == n:
            rows.append(Row("convert", n, n, "shares", "client", ss_cost.reveal_cost(_size(graph, n), cal), dealer,
                            once, {"what": "2PC reveals the logits to the client", "hiding": "n/a (the logits are the output)"}))
            rows.append(Row("convert", n, n, "he_last", "client", Cost(),
                            info={"what": "the server floods the result; the client decrypts the logits",
                                  "hiding": "n/a (the logits are the output)"}))
    for f in data.get("fused", {}).values():
        c = ss_cost.piece_cost(f, cal, slack_per_round=s_bar)
        if f["kind_out"] == "bfv_in":  # it ends an ss segment with an opening, as the reduce row does
            c = c + Cost(client_s=cal["ss"]["segment_overhead_s"], server_s=cal["ss"]["segment_overhead_s"],
                         overlap=True)
        rows.append(Row("ss", f["start"], f["stop"], f["kind_in"], f["kind_out"], c, dealer, once, {
            "layers": list(graph.names[f["start"]:f["stop"]]), "fused": f["kind"],
            "hiding": "perfect (uniform mod t)"}, offline_s=ss_cost.offline_share_s(f, cal)))
    if he:
        bfv = data.get("bfv", {})
        for key, st in bfv.items():
            if "error" in st:
                continue
            a, b, last = (int(v) for v in key.split("-"))
            p = st["params"]
            rows.append(Row("he", a, b, "bfv_in", "he_last" if last else "bfv_out", bfv_cost.segment_cost(st, cal),
                            info={"layers": list(graph.names[a:b]), "scheme": "bfv", "N": p["N"], "t_bits":
                                  int(p["t"]).bit_length(), "weight_bits": st["weight_bits"], "depth": 0,
                                  "input_ciphertexts": st["n_ct"], "output_ciphertexts": st["n_out_ct"],
                                  "last": bool(last)}))
        for key, st in data["he"].items():
            if "error" in st or ("error" not in bfv.get(key, {"error": 1})):
                continue  # a range that BFV runs is never CKKS in a hybrid plan
            a, b, last = (int(v) for v in key.split("-"))
            c = he_cost.segment_cost(st, cal, from_shares=a > 0, to_shares=not last,
                                     io=data.get("he_io", {}).get(io_key(st["params"])))
            p = st["params"]
            rows.append(Row("he", a, b, "he_in", "he_last" if last else "he_out", c, info={
                "layers": list(graph.names[a:b]), "N": p["N"], "depth": st["depth"], "out_level": st["out_level"],
                "primes": list(p["coeff_mod_bit_sizes"]), "input_ciphertexts": st["n_ct"], "last": bool(last)}))
    rows += whole_model_rows(graph, cal)
    return rows


def whole_model_rows(graph: Graph, cal: dict) -> list[Row]:
    n = len(graph)
    rows = []
    ch = (cal.get("cheetah") or {}).get(graph_digest(graph))
    if ch:  # measured on loopback: the latency is compute (and loopback transfer), plus the network's share
        rows.append(Row("cheetah", 0, n, "client", "client",
                        Cost(server_s=ch["latency_s"], bytes_up=ch["bytes_up"], bytes_down=ch["bytes_down"],
                             rounds=ch["rounds"]), info={"source": ch.get("source", "calibration table")}))
    for k in range(1, n):
        t = cal.get("plain_layer_s", 2e-4)
        rows.append(Row("noisy", 0, n, "client", "client",
                        Cost(client_s=k * t, server_s=(n - k) * t, bytes_up=8 * _size(graph, k) + NOISY_FEATURE_OVERHEAD,
                             bytes_down=8 * _size(graph, n) + NOISY_FEATURE_OVERHEAD, rounds=1),
                        frozenset({"client_plaintext", "epsilon"}), info={"split": k}))
    return rows
