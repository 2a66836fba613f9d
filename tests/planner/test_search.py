"""The planner's search (privinfer/planner/search.py) and cost arithmetic (cost.py) on synthetic cost tables:
the DP is exact (equal to brute force), every policy removes what it forbids, every objective is honoured."""
import random

import pytest
from hypothesis import given, settings, strategies as st

from privinfer.errors import ParameterError
from privinfer.planner.cost import PROFILES, Cost, NetworkProfile, parse_network
from privinfer.planner.search import (NoPlanError, Policy, Row, brute_force, choose, objective_fn, path_latency,
                                      path_value, shortest, total_cost)

WAN = PROFILES["wan"]


def synthetic(n: int, rng: random.Random, offline: bool = False) -> list[Row]:
    """A random table shaped like the real one: ss pieces (single layers and some pairs), HE segments, the
    conversions, whole-model rows, with random costs and a shared per-query `once` cost on the 2PC rows.
    `offline`: the ss pieces also carry a random share of the offline phase (`Row.offline_s`), as the real
    table's do, and the once cost is random (so that it may be hidden by an HE prefix, or not)."""
    def cost(**kw):
        return Cost(client_s=rng.uniform(0, 0.05), server_s=rng.uniform(0, 0.2), bytes_up=rng.randint(0, 10**6),
                    bytes_down=rng.randint(0, 10**6), rounds=rng.randint(0, 5), overlap=rng.random() < 0.5, **kw)

    def piece():
        if not offline:
            return {"cost": cost()}
        c = Cost(client_s=rng.uniform(0, 0.2), server_s=rng.uniform(0, 0.2), bytes_up=rng.randint(0, 10**6),
                 bytes_down=rng.randint(0, 10**6), rounds=rng.randint(0, 5), overlap=True)
        return {"cost": c, "offline_s": rng.uniform(0, min(c.client_s, c.server_s))}
    once = ("ss-offline", Cost(client_s=rng.uniform(0, 0.3) if offline else 0.01, server_s=0.01, rounds=int(offline),
                               overlap=True))
    rows = []
    for i in range(n):
        if rng.random() < 0.9:
            rows.append(Row("ss", i, i + 1, "shares", "shares", needs=frozenset({"dealer"}), once=once, **piece()))
        if i + 2 <= n and rng.random() < 0.3:
            rows.append(Row("ss", i, i + 2, "shares", "shares", needs=frozenset({"dealer"}), once=once, **piece()))
    for a in range(n):
        for b in range(a + 1, n + 1):
            if rng.random() < 0.4:
                rows.append(Row("he", a, b, "he_in", "he_last" if b == n else "he_out", cost()))
    rows += [Row("convert", 0, 0, "client", "shares", Cost(), frozenset({"dealer"}), once),
             Row("convert", 0, 0, "client", "he_in", Cost()),
             Row("convert", n, n, "shares", "client", cost(), frozenset({"dealer"}), once),
             Row("convert", n, n, "he_last", "client", Cost())]
    for i in range(1, n):
        rows += [Row("convert", i, i, "shares", "he_in", cost(), frozenset({"dealer"}), once),
                 Row("convert", i, i, "he_out", "shares", Cost(), frozenset({"dealer"}), once)]
    if rng.random() < 0.5:
        rows.append(Row("cheetah", 0, n, "client", "client", cost()))
    return rows


@pytest.mark.parametrize("objective", ["latency", "bytes", "client_seconds"])
@settings(max_examples=25)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 4))
def test_dp_equals_brute_force(objective, seed, n):
    rows = synthetic(n, random.Random(seed))
    f = objective_fn(objective, "wan")
    try:
        expect, _ = brute_force(rows, n, f)
    except NoPlanError:
        with pytest.raises(NoPlanError):
            shortest(rows, n, f)
        return
    got, path = shortest(rows, n, f)
    assert got == pytest.approx(expect, rel=1e-9, abs=1e-12)
    # the path is a real plan: contiguous, from the client's input to the client's logits, its value recomputed
    assert path[0].start == 0 and path[0].kind_in == "client" and path[-1].stop == n and path[-1].kind_out == "client"
    for r, s in zip(path, path[1:]):
        assert (r.stop, r.kind_out) == (s.start, s.kind_in)
    if objective == "latency":
        assert WAN.latency(total_cost(path)) == pytest.approx(got, rel=1e-9)


@settings(max_examples=60)
@given(seed=st.integers(0, 10**6), n=st.integers(1, 4))
def test_dp_with_offline_overlap_equals_brute_force(seed, n):
    """Latency with the offline phase overlapped with an HE prefix (max(P, O) + R, not a sum of edge weights):
    the label search still finds the brute-force optimum, and the plan's latency is that value."""
    rows = synthetic(n, random.Random(seed), offline=True)
    f = WAN.latency
    try:
        expect, _ = brute_force(rows, n, f, overlap=True)
    except NoPlanError:
        return
    got, path = shortest(rows, n, f, overlap=True)
    assert got == pytest.approx(expect, rel=1e-9, abs=1e-12)
    assert path_latency(path, WAN) == pytest.approx(got, rel=1e-9)
    assert got <= shortest(rows, n, f)[0] + 1e-12  # overlapping never costs more than the sum
    assert choose(rows, n, Policy(), "latency", WAN)[0] == pytest.approx(got)


def _overlap_table():
    """Two HE prefixes into the same 2PC state, then one ss piece with a large offline share: A reaches the
    state sooner (0.5 s) but spent the prefix's slack on its hand-over's tuples; B arrives later (0.6 s) with
    all of it left. B is the optimum (0.6 s against 1.1 s): a search keeping one label per state (A's) misses it."""
    once = ("ss-offline", Cost(overlap=True))
    two = lambda s: Cost(client_s=s, server_s=s, overlap=True)  # noqa: E731
    return [Row("convert", 0, 0, "client", "he_in", Cost()),
            Row("he", 0, 1, "he_in", "he_out", Cost(server_s=0.5), info={"route": "A"}),
            Row("convert", 1, 1, "he_out", "shares", two(0.5), once=once, offline_s=0.5),
            Row("convert", 0, 0, "client", "bfv_in", Cost()),
            Row("he", 0, 1, "bfv_in", "bfv_out", Cost(server_s=0.6), info={"route": "B"}),
            Row("convert", 1, 1, "bfv_out", "shares", Cost(overlap=True), once=once),
            Row("ss", 1, 2, "shares", "shares", two(0.6), once=once, offline_s=0.6),
            Row("convert", 2, 2, "shares", "client", Cost(overlap=True), once=once)]


def test_offline_phase_overlaps_the_he_prefix():
    rows = _overlap_table()
    f = PROFILES["loopback"].latency
    value, path = shortest(rows, 2, f, overlap=True)
    assert value == pytest.approx(0.6) and path[1].info["route"] == "B"
    assert brute_force(rows, 2, f, overlap=True)[0] == pytest.approx(0.6)
    # in sequence (the old pricing, and every objective but latency): A 1.6 s, B 1.2 s
    assert shortest(rows, 2, f)[0] == pytest.approx(1.2)
    assert path_value(path, f) == pytest.approx(1.2) and path_value(path, f, overlap=True) == pytest.approx(0.6)
    # a plan that starts in 2PC has no prefix: the offline phase is paid in full, as before
    ss_only = [Row("convert", 0, 0, "client", "shares", Cost(overlap=True), once=("ss-offline", Cost(server_s=0.3))),
               Row("ss", 0, 1, "shares", "shares", Cost(client_s=0.2, server_s=0.2, overlap=True),
                   once=("ss-offline", Cost(server_s=0.3)), offline_s=0.1),
               Row("convert", 1, 1, "shares", "client", Cost())]
    assert shortest(ss_only, 1, f, overlap=True)[0] == pytest.approx(0.5) == shortest(ss_only, 1, f)[0]


def test_offline_share_must_be_part_of_both_parties_seconds():
    bad = [Row("convert", 0, 0, "client", "shares", Cost()),
           Row("ss", 0, 1, "shares", "shares", Cost(client_s=0.1, server_s=0.2, overlap=True), offline_s=0.15),
           Row("convert", 1, 1, "shares", "client", Cost())]
    with pytest.raises(ParameterError):
        shortest(bad, 1, WAN.latency, overlap=True)
    bad[1] = Row("ss", 0, 1, "shares", "shares", Cost(client_s=0.1, server_s=0.2, overlap=True), offline_s=-0.01)
    with pytest.raises(ParameterError):
        shortest(bad, 1, WAN.latency, overlap=True)


def test_once_cost_paid_once_per_plan():
    once = ("ss-offline", Cost(server_s=1.0))
    rows = [Row("convert", 0, 0, "client", "shares", Cost(), once=once),
            Row("ss", 0, 1, "shares", "shares", Cost(server_s=0.1), once=once),
            Row("ss", 1, 2, "shares", "shares", Cost(server_s=0.1), once=once),
            Row("convert", 2, 2, "shares", "client", Cost(), once=once)]
    value, path = shortest(rows, 2, lambda c: c.compute_s)
    assert value == pytest.approx(1.2)
    assert total_cost(path).compute_s == pytest.approx(1.2)


def _policy_table():
    """Layers 0-1; noisy is cheapest, then ss, then cheetah, then he."""
    n, dealer = 2, frozenset({"dealer"})
    return n, [Row("noisy", 0, n, "client", "client", Cost(client_s=0.001), frozenset({"client_plaintext", "epsilon"}),
                   info={"split": 1}),
               Row("convert", 0, 0, "client", "shares", Cost(), dealer),
               Row("ss", 0, 2, "shares", "shares", Cost(server_s=0.1), dealer),
               Row("convert", 2, 2, "shares", "client", Cost(), dealer),
               Row("cheetah", 0, n, "client", "client", Cost(server_s=0.5)),
               Row("convert", 0, 0, "client", "he_in", Cost()),
               Row("he", 0, 2, "he_in", "he_last", Cost(server_s=0.9)),
               Row("convert", 2, 2, "he_last", "client", Cost())]


def _protocols(path):
    return {r.protocol for r in path if r.protocol != "convert"}


def test_policy_model_private_forbids_client_plaintext():
    n, rows = _policy_table()
    assert _protocols(choose(rows, n, Policy(model_private=True, epsilon=1.0), "latency", "wan")[1]) == {"ss"}
    assert _protocols(choose(rows, n, Policy(model_private=False, epsilon=1.0), "latency", "wan")[1]) == {"noisy"}


def test_policy_epsilon_none_forbids_noisy():
    n, rows = _policy_table()
    assert _protocols(choose(rows, n, Policy(model_private=False, epsilon=None), "latency", "wan")[1]) == {"ss"}


def test_policy_no_trusted_dealer_forbids_every_ss_row():
    n, rows = _policy_table()
    path = choose(rows, n, Policy(trusted_dealer=False), "latency", "wan")[1]
    assert _protocols(path) == {"cheetah"}
    assert not any("dealer" in r.needs for r in path)
    no_cheetah = [r for r in rows if r.protocol != "cheetah"]
    assert _protocols(choose(no_cheetah, n, Policy(trusted_dealer=False), "latency", "wan")[1]) == {"he"}
    only_ss = [r for r in rows if r.protocol in ("ss", "convert") and "dealer" in r.needs]
    with pytest.raises(NoPlanError):
        choose(only_ss, n, Policy(trusted_dealer=False), "latency", "wan")


def test_each_objective_picks_its_own_optimum():
    dealer = frozenset({"dealer"})
    # A: fast, many bytes, client-heavy; B: slow, few bytes; C: medium, no client work
    rows = [Row("cheetah", 0, 1, "client", "client", Cost(client_s=0.05, server_s=0.01, bytes_up=10**7)),
            Row("convert", 0, 0, "client", "he_in", Cost()),
            Row("he", 0, 1, "he_in", "he_last", Cost(client_s=0.2, server_s=3.0, bytes_up=1000)),
            Row("convert", 1, 1, "he_last", "client", Cost()),
            Row("convert", 0, 0, "client", "shares", Cost(), dealer),
            Row("ss", 0, 1, "shares", "shares", Cost(client_s=0.0, server_s=2.0, bytes_up=10**6), dealer),
            Row("convert", 1, 1, "shares", "client", Cost(), dealer)]
    pick = {o: _protocols(choose(rows, 1, Policy(), o, "loopback")[1]) for o in ("latency", "bytes", "client_seconds")}
    assert pick == {"latency": {"cheetah"}, "bytes": {"he"}, "client_seconds": {"ss"}}
    # the same table on a slow link: at 1 Mbit/s its 10 MB make the fastest protocol the slowest, 1 MB too
    assert _protocols(choose(rows, 1, Policy(), "latency", "1mbit:10ms")[1]) == {"he"}
    with pytest.raises(ParameterError):
        objective_fn("joules", "wan")


def test_latency_formula_and_overlap():
    c = Cost(client_s=0.1, server_s=0.3, bytes_up=1_250_000, bytes_down=2_500_000, rounds=3)
    assert WAN.latency(c) == pytest.approx(0.4 + 3 * 0.040 + 0.1 + 0.2)
    assert WAN.latency(Cost(client_s=0.1, server_s=0.3, overlap=True)) == pytest.approx(0.3)
    # a 2PC exchange sends both directions at once: the larger one takes the link time
    duplex = Cost(bytes_up=1_250_000, bytes_down=2_500_000, overlap=True)
    assert WAN.latency(duplex) == pytest.approx(0.2)
    assert WAN.latency(duplex + c) == pytest.approx(WAN.latency(duplex) + WAN.latency(c))
    both = Cost(client_s=0.1, server_s=0.3, overlap=True) + Cost(client_s=0.2, server_s=0.1)
    assert both.compute_s == pytest.approx(0.6) and both.client_s == pytest.approx(0.3)
    assert PROFILES["loopback"].latency(c) == pytest.approx(0.4)


@pytest.mark.parametrize("spec, rate, rtt", [("50mbit:20ms", 50.0, 20.0), ("1gbit:0.5ms", 1000.0, 0.5),
                                             ("800kbit:300ms", 0.8, 300.0), ("lan", 1000.0, 0.5),
                                             ("mobile", 20.0, 30.0), ("wan", 100.0, 40.0)])
def test_network_profiles(spec, rate, rtt):
    p = parse_network(spec)
    assert (p.rate_mbit, p.rtt_ms) == (rate, rtt)
    assert parse_network(p) is p


@pytest.mark.parametrize("bad", ["", "fast", "50mbit", "0mbit:1ms", "-5mbit:2ms", 42, "50mbit:x"])
def test_bad_network_is_a_typed_error(bad):
    with pytest.raises(ParameterError):
        parse_network(bad)


def test_network_profile_matches_the_emulator():
    from privinfer.netem import PROFILES as EMULATED
    for name, p in EMULATED.items():
        assert (PROFILES[name].rate_mbit, PROFILES[name].rtt_ms) == (p.rate_mbit, p.rtt_ms)
    assert isinstance(PROFILES["wan"], NetworkProfile)
