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
