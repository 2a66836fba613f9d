"""`privinfer bench`'s pricing of an emulated link as measured (privinfer/bench.py `link_as_measured`): the planner's
prediction in each record uses the round trip the TCP ping-pong timed on the link, at the nominal rate."""
from privinfer.bench import link_as_measured
from privinfer.planner.cost import PROFILES


def test_the_link_as_measured_takes_its_round_trip_at_the_nominal_rate():
    lan = PROFILES["lan"]  # 1000 Mbit/s, 0.5 ms
    assert link_as_measured(lan, {}) is lan
    p = link_as_measured(lan, {"tcp": 0.7, "gloo": 1.15})  # TCP's round trip (gloo's moves with its processes)
    assert (p.rtt_ms, p.rate_mbit) == (0.7, 1000.0)
    assert link_as_measured(lan, {"gloo": 0.8}).rtt_ms == 0.8  # records that kept gloo's only
    # the rate stays nominal (a figure measured on the link is recorded, not priced: see link_as_measured)
    assert link_as_measured(lan, {"tcp": 0.7, "gloo": 0.8, "link_ns_per_byte": 11.5}).rate_mbit == 1000.0
