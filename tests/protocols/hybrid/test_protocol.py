"""`hybrid` end to end: client and server over loopback TCP, logits against the plaintext reference.

make-test cost is kept small (two sessions on cryptonets-mnist, a few images each); every two- and
three-segment plan on the zoo networks runs under `-m slow` (`test_every_short_plan`).
"""
import itertools

import numpy as np
import pytest

from privinfer import PrivateSession
from privinfer.cli import build_parser, _dealer_options
from privinfer.errors import PrivinferError, UnsupportedLayerError
from privinfer.model.reference import run_reference
from privinfer.planner.plan import parse_plan
from privinfer.zoo import load_dataset, load_model

TOL = 1e-2
# a plan that ends in HE returns the `he` protocol's logits: its own tolerance (tests/protocols/he/test_protocol.py, fast mode)
HE_TOL = 3e-2
OPTS = {"dealer": "local", "mpc_timeout": 30.0, "circuit_privacy": "fast"}  # flood mode: 2^-5 logit noise


def images(name, n):
    X, _ = load_dataset(name, "test")
    return np.asarray(X[:n], dtype=np.float64)


def check(name, plan, n=2, tol=None, **opts):
    g = load_model(name)
    X = images(name, n)
    with PrivateSession(g, "hybrid", plan=plan, **OPTS, **opts) as s:
        out = np.stack([s.infer(x) for x in X])
        ref = run_reference(g, X)
        tol = tol or (HE_TOL if plan.split(",")[-1].startswith("he") else TOL)
        assert np.max(np.abs(out - ref)) < tol, (plan, np.max(np.abs(out - ref)))
        assert np.all(out.argmax(1) == ref.argmax(1)), plan
        return s.stats


def test_three_segments_both_conversions():
    stats = check("cryptonets-mnist", "he:0,ss:1,he:2-", n=3)
    p = stats.privacy
    assert p["plan"] == "he:0,ss:1,he:2-5" and p["layer_protocols"] == ["he", "ss", "he", "he", "he", "he"]
    assert [c["kind"] for c in p["conversions"]] == ["he->ss", "ss->he"]
    # he:0 is a convolution alone: BFV, perfect; he:2- holds x²: CKKS, 20 bits (protocols/convert)
    assert p["conversions"][0]["hiding"] == "perfect" and p["conversions"][1]["hiding_bits"] == 20
    assert p["model_private"] is False
    assert p["guarantee"] == "cryptographic-server-dealer"  # local dealer: said plainly
    assert all(q.rounds > 0 and q.bytes_client_to_server > 0 for q in stats.queries)


def test_bfv_segment_between_ss_segments_hides_perfectly():
    """ss -> BFV -> ss: both conversions mod t (one comparison each in the party), nothing statistical left."""
    stats = check("cryptonets-mnist", "ss:0-1,he:2-3,ss:4-", n=2, tol=TOL, hiding="perfect")
    p = stats.privacy
    assert [(c["kind"], c["hiding"]) for c in p["conversions"]] == [("ss->he", "perfect"), ("he->ss", "perfect")]
    assert not any("19-20 bits" in x for x in p["not_protected"])
    # the BFV result's flood is stated against the worst-case noise bound; below 40 bits, weights are not claimed
    bits = p["conversions"][1]["circuit_bits"]
    assert p["model_private"] is (bits >= 40)
    assert bits >= 40 or any(f"{bits} statistical bits" in x for x in p["not_protected"])


def test_perfect_hiding_refuses_a_bfv_segment_without_accurate_weights():
    """cryptonets' last linear layer after x²: its sound input bound (4.7e4) leaves no room for 2^-12 weights."""
    with pytest.raises(PrivinferError, match="BFV segment 5-5"):
        PrivateSession(load_model("cryptonets-mnist"), "hybrid", plan="ss:0-4,he:5", spawn="thread",
                       hiding="perfect", **OPTS)


def test_perfect_hiding_refuses_a_ckks_conversion():
    with pytest.raises(PrivinferError, match=r"he:2-5.*poly.*hiding='best'"):
        PrivateSession(load_model("cryptonets-mnist"), "hybrid", plan="he:0,ss:1,he:2-", spawn="thread",
                       hiding="perfect", **OPTS)


@pytest.mark.slow
def test_two_segments_ss_first_then_he():
    stats = check("cryptonets-mnist", "ss:0-1,he:2-", n=2)
    assert [c["kind"] for c in stats.privacy["conversions"]] == ["ss->he"]


def test_cli_plan_flag():
    a = build_parser().parse_args(["serve", "--model", "cryptonets-mnist", "--protocol", "hybrid",
                                   "--plan", "he:0,ss:1-", "--dealer", "local"])
    assert _dealer_options(a) == {"dealer": "local", "plan": "he:0,ss:1-"}
    a = build_parser().parse_args(["serve", "--model", "cryptonets-mnist", "--protocol", "he", "--plan", "he:0-"])
    with pytest.raises(PrivinferError, match="--plan applies to --protocol hybrid only"):
        _dealer_options(a)


def test_bad_plan_refused_by_the_session_with_the_layer_named():
    with pytest.raises(PrivinferError, match="layer 1 .*relu"):
        PrivateSession(load_model("minionn-mnist"), "hybrid", plan="he:0-1,ss:2-", spawn="thread", **OPTS)


def short_plans(n: int):
    """Every plan of two or three segments on n layers (protocols alternate)."""
    for k in (1, 2):
        for cuts in itertools.combinations(range(1, n), k):
            bounds = (0, *cuts, n)
            for first in ("he", "ss"):
                protos = [first if i % 2 == 0 else ("ss" if first == "he" else "he") for i in range(k + 1)]
                yield ",".join(f"{p}:{a}-{b - 1}" for p, a, b in zip(protos, bounds, bounds[1:]))


def valid_short_plans(name):
    g = load_model(name)
    out = []
    for plan in short_plans(len(g.layers)):
        try:
            parse_plan(plan, g)
        except UnsupportedLayerError:
            continue
        out.append(plan)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", ["cryptonets-mnist", "minionn-mnist", "mixed-mnist"])
def test_every_short_plan(name):
    """Every plan runs and matches the reference, or is refused with a typed error before any query: a masked
    CKKS segment whose values leave no room for a 16-bit mask (protocols/convert) is refused, not run weakly."""
    from privinfer.errors import PrivinferError
    plans = valid_short_plans(name)
    assert plans
    refused = []
    for plan in plans:
        try:
            check(name, plan, n=2)
        except PrivinferError as e:
            assert "no CKKS parameters carry a 16-bit mask" in str(e), (plan, str(e)[:300])
            refused.append(plan)
    assert len(refused) < len(plans) / 2, refused


@pytest.mark.slow
def test_gazelle_split_of_minionn():
    """GAZELLE's split: every HE segment linear, so BFV everywhere; six perfect conversions."""
    stats = check("minionn-mnist", "he:0,ss:1-2,he:3,ss:4-5,he:6-7,ss:8,he:9", n=3, tol=TOL, hiding="perfect")
    p = stats.privacy
    assert [c["hiding"] for c in p["conversions"]] == ["perfect"] * 6
    # lane packing (he/bfv_pack.py): no rotation before a product, so every BFV result's flood buys >= 40 bits
    # against the worst-case noise bound (the old plans' convolutions got 17 and 8.5): the weights are claimed
    assert all(c["circuit_bits"] >= 40 for c in p["conversions"] if c["kind"] == "he->ss")
    assert p["model_private"] is True and not any("statistical bits" in x for x in p["not_protected"])


def test_concurrent_clients_no_cross_talk():
    """Three clients at once on one hybrid server: each gets its own keys, CrypTen group and dealer."""
    import threading

    import privinfer
    g = load_model("cryptonets-mnist")
    X = images("cryptonets-mnist", 3)
    results, errors = {}, []
    with privinfer.Server(g, "hybrid", timeout=120, plan="he:0-2,ss:3-", **OPTS) as server:
        def client(i):
            try:
                with privinfer.connect(server.host, server.port, "hybrid", timeout=120) as s:
                    results[i] = s.infer(X[i])
            except Exception as e:  # reported below
                errors.append(e)
        threads = [threading.Thread(target=client, args=(i,)) for i in range(3)]
        [t.start() for t in threads]
        [t.join(600) for t in threads]
    assert not errors, errors
    ref = run_reference(g, X)
    for i in range(3):
        np.testing.assert_allclose(results[i], ref[i], atol=TOL)
