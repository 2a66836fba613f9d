"""BFV rows in the planner (privinfer/planner/bfv_cost.py, table.py): linear-only HE ranges are priced as the
BFV segments `hybrid` runs (hiding="best"), ranges with x² stay CKKS, the hiding policy removes CKKS
conversions by default, and an auto plan with a BFV segment matches the plaintext reference executor."""
import numpy as np
import pytest
import torch

from privinfer import PrivateSession
from privinfer.errors import ParameterError
from privinfer.model import compile_model
from privinfer.model.reference import run_reference
from privinfer.model.torch_layers import Square
from privinfer.planner.auto import make_plan
from privinfer.planner.bfv_cost import BFVCounter, segment_structure
from privinfer.planner.calibrate import load_calibration
from privinfer.planner.search import Policy
from privinfer.planner.table import build_rows, counts


@pytest.fixture(scope="module")
def mixed():
    """flatten, linear, x², linear, relu, linear: linear-only ranges and ranges with x²."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), Square(), torch.nn.Linear(8, 8),
                              torch.nn.ReLU(), torch.nn.Linear(8, 4))
    return compile_model(net, (1, 4, 4), (0.0, 1.0))


@pytest.fixture(scope="module")
def wide():
    """A first FC of 128 x 1024: 2PC opens its 131,072 weights every query, BFV packs its input in one ciphertext."""
    torch.manual_seed(1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(128, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 4))
    return compile_model(net, (2, 8, 8), (0.0, 1.0))


def _he_rows(rows):
    return {(r.start, r.stop, r.info.get("scheme", "ckks")) for r in rows if r.protocol == "he"}


def test_bfv_rows_for_linear_ranges_ckks_for_x2(mixed, cache):
    cal = load_calibration(warn=False)
    rows = build_rows(mixed, cal, counts(mixed))
    he = _he_rows(rows)
    for a, b in [(0, 2), (1, 2), (3, 4), (5, 6)]:  # linear only, inside a hybrid plan: BFV, never CKKS
        assert (a, b, "bfv") in he and (a, b, "ckks") not in he
    last = next(r for r in rows if r.protocol == "he" and (r.start, r.stop) == (5, 6))
    assert last.kind_out == "he_last"  # the last BFV segment returns the logits (flooded)
    for a, b in [(1, 3), (0, 4), (2, 3)]:  # x² inside: CKKS only
        assert (a, b, "ckks") in he and (a, b, "bfv") not in he
    bfv = next(r for r in rows if r.protocol == "he" and r.info.get("scheme") == "bfv" and (r.start, r.stop) == (1, 2))
    assert bfv.kind_in == "bfv_in" and bfv.kind_out == "bfv_out" and bfv.cost.rounds == 1
    assert bfv.cost.bytes_up > 100_000  # one real N=8192 ciphertext, serialized
    # the hand-overs next to BFV segments are real counted comparisons (several rounds, dealer tuples)
    lift = next(r for r in rows if r.kind_in == "bfv_out" and r.start == 2)
    assert lift.cost.rounds > 3 and lift.cost.dealer_bytes > 0 and lift.info["hiding"].startswith("perfect")


def test_bfv_ops_are_counted_like_the_engine(mixed):
    st = segment_structure(mixed, 1, 2, False)
    ops = st["ops"]
    assert st["n_ct"] == 1 and ops["mul_plain"] >= 1 and ops["to_ntt"] >= 1
    assert st["bytes_down"] < st["bytes_up"]  # the result is switched down to fewer primes
    # the counter mirrors the engine's forms: one NTT transform per ciphertext however many products use it,
    # products summed in NTT form, one transform back for the result
    from privinfer.planner.bfv_cost import _V
    be, v = BFVCounter(), _V(True, False)
    be.result(be.add(be.mul_plain(v, None), be.mul_plain(v, None)))
    assert be.counts == {"mul_plain": 2, "add": 1, "add_plain": 0, "rotate": 0, "to_ntt": 1, "from_ntt": 1}


def test_hiding_policy(mixed, cache):
    with pytest.raises(ParameterError):
        Policy(hiding="sometimes")
    cal = load_calibration(warn=False)
    rows = build_rows(mixed, cal, counts(mixed))
    ckks_conv = [r for r in rows if r.protocol == "convert" and "statistical" in r.info.get("hiding", "")]
    assert ckks_conv and all(not Policy().allows(r) for r in ckks_conv)
    assert all(Policy(hiding="statistical").allows(r) for r in ckks_conv)
    for net in ("loopback", "mobile"):
        plan = make_plan(mixed, net, calibration=cal)
        assert not any("statistical" in r.info.get("hiding", "") for r in plan.rows)
        if plan.protocol == "hybrid":
            assert plan.session_options()[1]["hiding"] == "perfect"
    # the explanation names every conversion's hiding
    plan = make_plan(mixed, "mobile", Policy(hiding="statistical"), calibration=cal)
    text = plan.explain()
    assert "hiding=statistical" in text
    conv = [r for r in plan.rows if r.protocol == "convert"]
    assert conv and all(f"hiding: {r.info['hiding']}" in text for r in conv)


@pytest.mark.slow  # 17 s: a planner-priced BFV plan runs against the reference in test_fused.py, auto sessions in test_auto.py
def test_auto_plan_with_a_bfv_segment_matches_the_reference(wide, cache):
    cal = load_calibration(warn=False)
    plan = make_plan(wide, "mobile", objective="bytes", calibration=cal)
    assert any(r.info.get("scheme") == "bfv" for r in plan.work), plan.explain()
    assert "hiding: perfect" in plan.explain()
    x = np.random.default_rng(3).uniform(0, 1, (2, 2, 8, 8))
    with PrivateSession(wide, "auto", network="mobile", objective="bytes", spawn="thread", warn=False) as s:
        assert s.plan.plan_string == plan.plan_string
        out = s.infer(x)
        conv = s.stats.privacy["conversions"]
    ref = run_reference(wide, x)
    assert np.max(np.abs(out - ref)) < 1e-2
    assert (out.argmax(1) == ref.argmax(1)).all()
    assert conv and all(c["hiding"] == "perfect" for c in conv)  # what ran is what was priced: BFV hand-overs


def test_cli_plan_hiding_flag(mixed, cache, tmp_path, capsys):
    import json
    from privinfer.cli import main
    from privinfer.model.ir import save_graph
    path = str(tmp_path / "mixed.npz")
    save_graph(mixed, path)
    for hiding in ("perfect", "statistical"):
        assert main(["plan", "--model", path, "--network", "mobile", "--plan-hiding", hiding, "--json"]) == 0
        d = json.loads(capsys.readouterr().out)
        assert d["policy"]["hiding"] == hiding
        if hiding == "perfect":
            assert not any("statistical" in r["info"].get("hiding", "") for r in d["rows"])
    with pytest.raises(SystemExit):  # argparse refuses an unknown choice
        main(["plan", "--model", path, "--plan-hiding", "sometimes"])
