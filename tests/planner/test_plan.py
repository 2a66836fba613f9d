"""Plan parsing and validation (privinfer/planner/plan.py): every layer exactly once, HE only where it can run."""
import pytest
from hypothesis import given, settings, strategies as st

from privinfer.errors import PrivinferError, UnsupportedLayerError
from privinfer.planner.plan import PlanError, layer_protocols, parse_plan, plan_string
from privinfer.zoo import load_model

MINIONN = load_model("minionn-mnist")  # conv relu pool conv relu pool flatten linear relu linear
GAZELLE = "he:0,ss:1-2,he:3,ss:4-5,he:6-7,ss:8,he:9"


def test_gazelle_split_parses_to_seven_segments():
    segs = parse_plan(GAZELLE, MINIONN)
    assert [s.protocol for s in segs] == ["he", "ss", "he", "ss", "he", "ss", "he"]
    assert plan_string(segs) == GAZELLE
    assert layer_protocols(segs) == ["he", "ss", "ss", "he", "ss", "ss", "he", "he", "ss", "he"]


def test_list_forms_and_merging():
    per_layer = ["he", "ss", "ss", "he", "ss", "ss", "he", "he", "ss", "he"]
    assert parse_plan(per_layer, MINIONN) == parse_plan(GAZELLE, MINIONN)
    assert parse_plan(["ss:0-4", "ss:5-"], MINIONN) == parse_plan("ss:0-", MINIONN)  # adjacent ranges merge


@pytest.mark.parametrize("plan, words", [
    ("he:0-3,ss:4-", ["layer 1", "relu", "valid for it: ss"]),
    ("he:0,ss:2-", ["layer 1", "no protocol", "valid for it: ss"]),
    ("he:0,ss:1-2,he:3,ss:4-5,he:6-8,ss:9", ["layer 8", "relu"]),
    ("ss:0-,he:2", ["layer 2", "twice"]),
    ("xx:0-", ["unknown protocol 'xx'"]),
    ("ss:0-12", ["outside 0..9"]),
    ("ss 0-9", ["not PROTOCOL:START-END"]),
    ("", ["empty"]),
    (["he", "ss"], ["needs 10"]),
])
def test_bad_plans_name_the_layer(plan, words):
    with pytest.raises((PlanError, UnsupportedLayerError)) as e:
        parse_plan(plan, MINIONN)
    assert isinstance(e.value, PrivinferError)
    for w in words:
        assert w in str(e.value)


def test_hybrid_server_refuses_a_bad_plan_before_building_anything():
    from privinfer.protocols import get_protocol
    cls = get_protocol("hybrid")
    with pytest.raises(UnsupportedLayerError, match="layer 2 .*maxpool2d"):
        cls(MINIONN, plan="ss:0-1,he:2-", dealer="local")
    with pytest.raises(PlanError, match="needs a plan"):
        cls(MINIONN, dealer="local")


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["he", "ss"]), min_size=10, max_size=10))
def test_any_assignment_round_trips_or_names_an_he_layer(per_layer):
    try:
        segs = parse_plan(per_layer, MINIONN)
    except UnsupportedLayerError as e:
        bad = [i for i, p in enumerate(per_layer) if p == "he" and MINIONN.layers[i].kind in ("relu", "maxpool2d")]
        assert bad and f"layer {bad[0]} " in str(e)
        return
    assert layer_protocols(segs) == per_layer
    assert parse_plan(plan_string(segs), MINIONN) == segs
    assert all(a.protocol != b.protocol for a, b in zip(segs, segs[1:]))
