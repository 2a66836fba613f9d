"""`privinfer bench`'s pricing of an emulated link as measured (privinfer/bench.py `link_as_measured`): the planner's
prediction in each record uses the round trip and the per-byte cost timed on the link, never a faster link than
the nominal one."""
import pytest

from privinfer.bench import link_as_measured
from privinfer.planner.cost import PROFILES, Cost


def test_the_link_as_measured_takes_its_round_trip_and_its_slower_rate():
    lan = PROFILES["lan"]  # 1000 Mbit/s, 0.5 ms
    assert link_as_measured(lan, {}) is lan
    p = link_as_measured(lan, {"tcp": 0.7, "gloo": 0.8})  # no per-byte figure: the nominal rate
    assert (p.rtt_ms, p.rate_mbit) == (0.8, 1000.0)
    p = link_as_measured(lan, {"tcp": 0.7})  # no 2PC parties on the link: TCP's round trip
    assert p.rtt_ms == 0.7
    p = link_as_measured(lan, {"tcp": 0.7, "gloo": 0.8, "link_ns_per_byte": 11.5})  # 8000 / 11.5 Mbit/s
    assert p.rate_mbit == pytest.approx(695.65, rel=1e-4) and "696 Mbit/s" in p.name
    c = Cost(bytes_up=1_000_000, bytes_down=1_000_000, overlap=True)
    assert p.latency(c) == pytest.approx(1e6 * 11.5e-9)  # a megabyte each way at once: 11.5 ms
    # a per-byte figure below the nominal rate's (measurement noise) never makes the link faster than nominal
    assert link_as_measured(lan, {"gloo": 0.8, "link_ns_per_byte": 2.0}).rate_mbit == 1000.0
    assert link_as_measured(lan, {"gloo": 0.8, "link_ns_per_byte": 0.0}).rate_mbit == 1000.0
