"""The per-round link cost of 2PC exchange rounds (privinfer/planner/cost.py `Cost.rounds_s`, ss_cost.round_slack):
hand-computed values, its limits (RTT -> 0 gives the loopback figure, a long RTT gives rounds x RTT less the
slack), composition, the JSON round trip, and the exact search over rows that carry slack."""
import random
import statistics

import pytest

from privinfer.errors import ProtocolError
from privinfer.planner import ss_cost
from privinfer.planner.cost import Cost, NetworkProfile
from privinfer.planner.search import NoPlanError, Row, brute_force, shortest


def test_rounds_s_by_hand():
    # two timed runs; round 1: slack 1 ms then 3 ms; round 2: 0 and 1 ms; round 3: no sample (request/reply)
    c = Cost(rounds=3, slack=((0.001, 0.003), (0.0, 0.001)))
    # the runs' totals are 1 ms and 4 ms (median 2.5 ms): the two exchange rounds add max(0, 2 RTT - 2.5 ms),
    # the request/reply round a full RTT
    assert c.rounds_s(0.002) == pytest.approx(0.0015 + 0.002)
    assert c.rounds_s(0.001) == pytest.approx(0.0 + 0.001)  # the slack can hide the whole round trip, no more
    # the link replaces the piece's total wait, not each round's alone: round 1's long wait gives back what
    # round 2 pays (each round alone at max(0, RTT - slack) would add 0 + 2 ms at RTT 2 ms)
    assert Cost(rounds=2, slack=((0.004,), (0.0,))).rounds_s(0.002) == pytest.approx(0.0)
    # the median over runs: one run slowed by a burst of load does not discount the rounds
    assert Cost(rounds=1, slack=((0.0, 0.0, 0.05),)).rounds_s(0.04) == pytest.approx(0.04)
    # a round recorded without samples pays the full RTT (no division by zero)
    assert Cost(rounds=1, slack=((),)).rounds_s(0.04) == pytest.approx(0.04)
    # the old model where nothing was recorded: rounds x RTT
    assert Cost(rounds=4).rounds_s(0.04) == pytest.approx(0.16)
    # rounds counted with different numbers of runs: each round's mean
    assert Cost(rounds=2, slack=((0.001, 0.003), (0.001,))).rounds_s(0.004) == pytest.approx(0.008 - 0.002 - 0.001)


def test_negative_slack_is_loopback_at_zero_rtt():
    """A round that waited less than the floor (slack < 0) adds nothing at RTT 0 and exactly the RTT above it."""
    c = Cost(rounds=1, slack=((-0.0001,),))
    assert c.rounds_s(0.0) == 0.0
    assert c.rounds_s(0.001) == pytest.approx(0.001)  # max(0, 1.1 ms) - 0.1 ms: the link's RTT exactly


@pytest.mark.parametrize("seed", range(5))
def test_limits(seed):
    rng = random.Random(seed)
    runs = rng.choice([1, 3, 5, None])  # None: rounds with different numbers of samples
    slack = tuple(tuple(rng.uniform(-2e-4, 3e-3) for _ in range(runs or rng.randint(1, 5)))
                  for _ in range(rng.randint(1, 30)))
    c = Cost(client_s=0.05, server_s=0.05, overlap=True, rounds=len(slack) + 2, slack=slack)
    # RTT -> 0: the loopback figure (compute), for any slack
    assert c.rounds_s(0.0) == 0.0
    assert NetworkProfile("x", None, 0.0).latency(c) == pytest.approx(0.05)
    assert c.rounds_s(1e-9) == pytest.approx(0.0, abs=1e-6)
    # a long RTT: rounds x RTT less the total positive slack (median of the runs' totals, or each round's mean)
    rtt = 0.04
    if runs:
        hidden = statistics.median(sum(max(0.0, r[k]) for r in slack) for k in range(runs))
    else:
        hidden = sum(statistics.fmean(max(0.0, x) for x in r) for r in slack)
    assert c.rounds_s(rtt) == pytest.approx(c.rounds * rtt - hidden)
    assert c.rounds * rtt - c.rounds_s(rtt) <= len(slack) * 3e-3 + 1e-12
    # between: non-decreasing and never above rounds x RTT
    prev = 0.0
    for k in range(1, 50):
        v = c.rounds_s(k * 1e-4)
        assert prev - 1e-12 <= v <= c.rounds * k * 1e-4 + 1e-12
        prev = v


def test_sums_carry_the_slack_and_pool_it():
    a = Cost(client_s=0.01, server_s=0.01, overlap=True, rounds=2, bytes_up=1000, slack=((0.0005,), (0.002,)))
    b = Cost(client_s=0.02, server_s=0.03, rounds=1)  # a request/reply part: no slack
    lan = NetworkProfile("lan", 1000.0, 0.5)
    s = a + b
    assert s.slack == a.slack and s.rounds == 3
    assert lan.latency(s) == pytest.approx(lan.latency(a) + lan.latency(b))
    # both sides' slack is kept, in order; a sum prices its exchange rounds as one piece (a plan prices each of
    # its rows apart: search.path_value), so parts whose slack exceeds their round trips give the excess back
    a2 = Cost(client_s=0.01, server_s=0.01, overlap=True, rounds=1, slack=((0.0001,),))
    both = a + a2
    assert both.slack == a.slack + a2.slack
    assert a.rounds_s(0.0005) == 0.0 and a2.rounds_s(0.0005) == pytest.approx(0.0004)
    assert both.rounds_s(0.0005) == pytest.approx(max(0.0, 3 * 0.0005 - 0.0026))
    # with one slack figure per round (the engine's, as the planner's rows carry) a sum prices like its parts
    e1 = Cost(rounds=3, slack=((0.0003,),) * 2)
    e2 = Cost(rounds=1, slack=((0.0003,),))
    assert (e1 + e2).rounds_s(0.0005) == pytest.approx(e1.rounds_s(0.0005) + e2.rounds_s(0.0005))
    assert e1.rounds_s(0.0005) == pytest.approx(2 * 0.0002 + 0.0005)


def test_json_round_trip_keeps_the_slack():
    c = Cost(client_s=0.1, rounds=2, slack=((0.001, -0.0001), (0.0,)), overlap=True)
    d = Cost.from_json(c.to_json())
    assert d == c and d.rounds_s(0.002) == c.rounds_s(0.002)
    old = {k: v for k, v in c.to_json().items() if k != "slack"}  # a plan written before the slack
    assert Cost.from_json(old).rounds_s(0.002) == pytest.approx(0.004)


def _runs(waits, nbytes):
    """Per timed run, per round: [wait, bytes] (as the counting parties report them)."""
    return [[[w, b] for w, b in zip(run, nbytes)] for run in waits]


def test_round_slack_and_floor_by_hand():
    # two timed runs of a 2-round piece; each round's slack is the late (smaller) party's wait above the floor
    w0 = _runs([[0.0010, 0.0020], [0.0012, 0.0003]], [8, 8])
    w1 = _runs([[0.0015, 0.0005], [0.0011, 0.0009]], [8, 8])
    assert ss_cost.round_slack(w0, w1, 0.0001) == [[pytest.approx(0.0009), pytest.approx(0.0010)],
                                                   [pytest.approx(0.0004), pytest.approx(0.0002)]]
    # a round of 100 KB at 2 ns per byte spent 0.2 ms copying on loopback: not slack (the link prices its bytes)
    big0, big1 = _runs([[0.0010]], [100_000]), _runs([[0.0015]], [100_000])
    assert ss_cost.round_slack(big0, big1, 0.0001, 2e-9) == [[pytest.approx(0.0007)]]
    assert ss_cost.round_slack([], [], 0.0001) == []
    with pytest.raises(ProtocolError):
        ss_cost.round_slack(w0, _runs([[0.001]], [8]), 0.0)
    with pytest.raises(ProtocolError):  # runs of one party with different round counts: typed, not IndexError
        ss_cost.round_slack(_runs([[0.001, 0.002]], [8, 8]) + _runs([[0.001]], [8]),
                            _runs([[0.001, 0.002]], [8, 8]) + _runs([[0.001]], [8]), 0.0)
    f0 = {"small": [1e-4, 3e-4, 2e-4], "large": [6e-4, 9e-4, 7e-4], "large_bytes": 500_000}
    f1 = {"small": [2e-4, 1e-4, 5e-4], "large": [8e-4, 6e-4, 9e-4], "large_bytes": 500_000}
    floor, per_byte = ss_cost.exchange_floor(f0, f1)
    assert floor == pytest.approx(1e-4) and per_byte == pytest.approx((6e-4 - 1e-4) / 500_000)  # late waits 6, 6, 7 x 1e-4
    assert ss_cost.exchange_floor({}, {}) == (0.0, 0.0)


def test_counts_pair_each_round_of_both_parties():
    """`combine_counts` pairs party 0's round k with party 1's round k (the late party's wait is the smaller),
    takes bytes up from the client (rank 1), and prices the slack against the floor both measured."""
    floor = {"small": [1e-4] * 3, "large": [1e-4] * 3, "large_bytes": 8}
    r0 = {"piece": [0, 1], "s": 0.010, "bytes_sent": 100, "bytes_received": 200, "rounds": 2, "dealer_elements": 5,
          "waits": _runs([[0.0030, 0.0002]], [8, 8])}
    r1 = {"piece": [0, 1], "s": 0.012, "bytes_sent": 200, "bytes_received": 100, "rounds": 2, "dealer_elements": 5,
          "waits": _runs([[0.0004, 0.0025]], [8, 8])}
    (row,) = ss_cost.combine_counts({"pieces": [r0], "floor": floor}, {"pieces": [r1], "floor": floor})
    assert row["s"] == 0.012 and row["bytes_up"] == 200 and row["bytes_down"] == 100 and row["rounds"] == 2
    assert row["slack"] == [[pytest.approx(0.0003)], [pytest.approx(0.0001)]]
    with pytest.raises(ProtocolError):
        ss_cost.combine_counts({"pieces": [r0], "floor": floor}, {"pieces": [{**r1, "piece": [1, 2]}], "floor": floor})


def test_a_piece_counted_before_the_slack_pays_rounds_x_rtt():
    p = {"piece": [0, 1], "s": 0.01, "bytes_up": 0, "bytes_down": 0, "rounds": 3, "dealer_elements": 0}
    c = ss_cost.piece_cost(p, {"ss": {"offline_s_per_dealer_element": 0.0}})
    assert c.slack == () and c.rounds_s(0.04) == pytest.approx(0.12)
    c2 = ss_cost.piece_cost({**p, "slack": [[0.001], [0.001], [0.001]]}, {"ss": {"offline_s_per_dealer_element": 0.0}})
    assert c2.rounds_s(0.04) == pytest.approx(0.117)


@pytest.mark.parametrize("seed", range(30))
def test_dp_equals_brute_force_with_slack(seed):
    """Rows whose rounds carry slack: the search is still exact (each row's latency is its own)."""
    rng = random.Random(seed)
    n = rng.randint(1, 4)

    def cost():
        k = rng.randint(0, 6)
        return Cost(client_s=rng.uniform(0, 0.01), server_s=rng.uniform(0, 0.01), overlap=True,
                    rounds=k + rng.randint(0, 2), bytes_up=rng.randint(0, 10**5),
                    slack=tuple(tuple(rng.uniform(-1e-4, 2e-3) for _ in range(3)) for _ in range(k)))
    rows = [Row("convert", 0, 0, "client", "shares", Cost()), Row("convert", n, n, "shares", "client", cost())]
    for a in range(n):
        for b in range(a + 1, min(n, a + 2) + 1):
            if rng.random() < 0.8:
                rows.append(Row("ss", a, b, "shares", "shares", cost()))
    f = NetworkProfile("lan", 1000.0, 0.5).latency
    try:
        expect, _ = brute_force(rows, n, f)
    except NoPlanError:
        return
    assert shortest(rows, n, f)[0] == pytest.approx(expect, rel=1e-9, abs=1e-12)


def test_a_counting_run_with_a_slow_exchange_floor_is_counted_again(monkeypatch, capsys):
    """Parties placed on one core show it in the floor: that run is repeated once and the lower floor kept."""
    slow = [{"piece": [0, 1], "s": 0.05, "floor_s": 0.0018}]
    fast = [{"piece": [0, 1], "s": 0.03, "floor_s": 0.0001}]
    runs = [slow, fast]
    monkeypatch.setattr(ss_cost, "_count_once", lambda *a: runs.pop(0))
    assert ss_cost.count_pieces(None) == fast and "once more" in capsys.readouterr().err
    runs[:] = [fast, slow]
    assert ss_cost.count_pieces(None) == fast and runs == [slow]  # a quiet run is not repeated


def test_piece_cost_gives_the_engines_slack_to_timed_rounds_only():
    """`piece_cost(slack_per_round=...)` replaces each timed round's samples by the engine's slack per round; a
    round counted without samples keeps paying a full RTT."""
    p = {"s": 0.01, "bytes_up": 8, "bytes_down": 8, "rounds": 3, "dealer_elements": 0, "slack": [[0.001, 0.002], []]}
    cal = {"ss": {"offline_s_per_dealer_element": 0.0}}
    assert ss_cost.piece_cost(p, cal).slack == ((0.001, 0.002), ())
    c = ss_cost.piece_cost(p, cal, slack_per_round=0.0004)
    assert c.slack == ((0.0004,), ())
    assert c.rounds_s(0.001) == pytest.approx((0.001 - 0.0004) + 2 * 0.001)
