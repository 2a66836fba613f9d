"""Fused BFV hand-overs in the planner (privinfer/planner/fused.py, ss_cost._run_handover, table.py): the rows
follow the hybrid engine's own `_fuse` decision, and a plan priced with them has the rounds a real hybrid
session runs."""
import numpy as np
import pytest
import torch

from privinfer import PrivateSession
from privinfer.model import compile_model
from privinfer.model.reference import run_reference
from privinfer.planner import fused
from privinfer.planner.auto import price_plan
from privinfer.planner.calibrate import load_calibration
from privinfer.planner.table import build_rows, counts


@pytest.fixture(scope="module")
def cnn():
    """conv, relu, maxpool 2x2, flatten, linear, relu, linear: GAZELLE's pattern in miniature."""
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
                              torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    return compile_model(net, (1, 6, 6), (0.0, 1.0))


PLAN = "he:0,ss:1-2,he:3-4,ss:5,he:6"  # linear layers in BFV, ReLU and max pool in 2PC


def _spans(rows):
    return {(f["kind"], f["start"], f["stop"], f["kind_in"], f["kind_out"]) for f in rows}


def test_rows_are_the_engines_fusion_decisions(cnn):
    got = _spans(fused.fused_handovers(cnn, lifts={1, 3, 5, 6}, reduces={1, 3, 5, 6}))
    # ReLU, MaxPool before an opening: the pool's last level and the ReLU run inside it
    assert ("pool_relu_reduce", 1, 3, "shares", "bfv_in") in got
    # a lone ReLU between two BFV segments: lift, ReLU and opening in one comparison
    assert ("lift_relu_reduce", 5, 6, "bfv_out", "bfv_in") in got
    assert ("lift_relu", 5, 6, "bfv_out", "shares") in got and ("relu_reduce", 5, 6, "shares", "bfv_in") in got
    # a ReLU right after a lift but before a MaxPool is not fused (the engine swaps ReLU and MaxPool first)
    assert not any(k[1] == 1 and k[3] == "bfv_out" for k in got)
    # no BFV neighbour, no fused row
    assert fused.fused_handovers(cnn, set(), set()) == []


def test_rows_follow_the_engine_when_it_fuses_nothing(cnn, monkeypatch):
    import privinfer.protocols.hybrid.party as party

    def no_fusion(graph, s):
        s["shape"], s["out_shape"] = tuple(graph.shapes[s["start"]]), tuple(graph.shapes[s["stop"]])
        s["head"] = s["tail"] = None
        return list(graph.layers[s["start"]:s["stop"]])
    monkeypatch.setattr(party, "_fuse", no_fusion)
    assert fused.fused_handovers(cnn, {1, 3, 5, 6}, {1, 3, 5, 6}) == []


def test_fixed_plan_rounds_match_a_real_hybrid_session(cnn, cache):
    cal = load_calibration(warn=False)
    data = counts(cnn)
    assert {f["kind"] for f in data["fused"].values()} >= {"pool_relu_reduce", "lift_relu_reduce"}
    rows = build_rows(cnn, cal, data)
    # where the engine always fuses, the plain hand-over is not offered: the lift at 5 and the opening at 6
    plain = {(r.kind_in, r.kind_out, r.start) for r in rows if r.protocol == "convert"}
    assert ("bfv_out", "shares", 5) not in plain and ("shares", "bfv_in", 6) not in plain
    assert ("shares", "bfv_in", 3) not in plain  # ReLU, MaxPool always sit in one ss segment before it
    plan = price_plan(cnn, PLAN, "loopback", calibration=cal)
    assert plan.plan_string == PLAN
    assert {r.info.get("fused") for r in plan.work} >= {"pool_relu_reduce", "lift_relu_reduce"}
    x = np.random.default_rng(4).uniform(0, 1, (1, 1, 6, 6))
    with PrivateSession(cnn, "hybrid", plan=PLAN, hiding="perfect", spawn="thread", warn=False) as s:
        out = s.infer(x)
        measured = s.stats.last.rounds
    ref = run_reference(cnn, x)
    assert np.max(np.abs(out - ref)) < 1e-2
    # privinfer's channel rounds plus the counted 2PC rounds: what the planner predicts is what runs
    assert plan.cost.rounds == measured, plan.explain()
    # the plan starts with a BFV segment: the 2PC offline phase runs beside it (#10), priced as max, not sum
    net = plan.network
    seq = net.latency(plan.cost)
    prefix = sum(net.latency(r.cost) for r in plan.rows[:next(i for i, r in enumerate(plan.rows) if r.once)])
    offline = sum(r.offline_s for r in plan.rows) + net.latency(
        next(r for r in plan.rows if r.once).once[1])
    assert plan.predicted_latency_s() == pytest.approx(seq - min(prefix, offline), rel=1e-9)
    assert plan.offline_overlap_s() == pytest.approx(min(prefix, offline), rel=1e-9) and min(prefix, offline) > 0
    assert "the 2PC offline phase runs while the HE prefix does" in plan.explain()


def test_fused_rows_are_counted_at_their_neighbours_modulus(cnn, monkeypatch):
    """Each joint hand-over is counted at the plaintext modulus of the BFV segment next to it (a lift at the t
    of the segment ending at its start, an opening at the t of the one starting at its stop), every modulus
    where segments of different t meet, and the row keeps the dearest count (was: the first segment's t)."""
    from privinfer.planner import ss_cost, table
    seen = []

    def fake_count(graph, handovers=None, **kw):
        seen.extend(handovers)
        return [{"kind": h[0], "shape": list(h[1]), "s": 0.001 * (1 + h[2] % 7), "bytes_up": 10, "bytes_down": 20,
                 "rounds": 3, "dealer_elements": 5} for h in handovers]
    monkeypatch.setattr(ss_cost, "count_pieces", fake_count)
    p = lambda t: {"params": {"t": t}}  # noqa: E731
    # BFV segments: 0 (t=101), 3-4 (t=203), 4 (t=307, also ends at 5), 6 (t=409): layer 5 is the lone ReLU
    data = {"bfv": {"0-1-0": p(101), "3-5-0": p(203), "4-5-0": p(307), "6-7-1": p(409)}, "bfv_version": 3}
    assert table._add_fused(cnn, data, lambda m: None)
    by_key = {}
    for kind, shape, t, pool, t2 in seen:
        by_key.setdefault(kind, set()).add((t, t2))
    assert by_key["lift_relu_reduce"] == {(203, 409), (307, 409)}  # ReLU 5: from either segment into 6's
    assert by_key["lift_relu"] == {(203, None), (307, None)}
    assert by_key["relu_reduce"] == {(409, 409)} and by_key["pool_relu_reduce"] == {(203, 203)}
    row = data["fused"]["lift_relu_reduce-5-6"]
    assert sorted(map(tuple, row["t"])) == [(203, 409), (307, 409)]
    assert row["s"] == pytest.approx(max(0.001 * (1 + 203 % 7), 0.001 * (1 + 307 % 7)))
    assert not table._add_fused(cnn, data, lambda m: None)  # cached with its version
