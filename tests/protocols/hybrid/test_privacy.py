"""`hybrid`'s privacy statement is decided by the plan, before any query (review findings: it used to read the
conversions logged by queries, so at set-up it claimed model privacy; and it claimed model privacy while a
segment's exact result reached the client)."""
from types import SimpleNamespace

import pytest

from privinfer.planner.plan import parse_plan
from privinfer.protocols.he.bfv import COEFF_BITS, N_DEFAULT, BFVParams
from privinfer.protocols.hybrid import _HybridClient
from privinfer.errors import ParameterError
from privinfer.zoo import load_model

G = load_model("cryptonets-mnist")  # conv x2 flatten linear x2 linear


def _client(plan: str, bfv: set[int]) -> _HybridClient:
    c = object.__new__(_HybridClient)
    c.segs = parse_plan(plan, G)
    c.ss, c.noisy, c.conversions = None, None, []
    c.he = {i: SimpleNamespace(scheme="bfv" if i in bfv else "ckks", circuit_bits=41.0)
            for i, s in enumerate(c.segs) if s.protocol == "he"}
    return c


def test_a_ckks_hand_over_is_not_model_private_before_any_query():
    p = _client("he:0-1,ss:2-", bfv=set()).privacy()
    assert p["model_private"] is False
    assert any("CKKS conversions" in n for n in p["not_protected"])


def test_bfv_hand_overs_are_perfect_before_any_query():
    p = _client("ss:0-1,he:2-3,ss:4-", bfv={1}).privacy()
    assert p["model_private"] is True
    assert not any("CKKS conversions" in n for n in p["not_protected"])


def test_a_result_revealed_in_the_clear_is_not_model_private():
    p = _client("he:0-3,plain:4-", bfv={0}).privacy()
    assert p["model_private"] is False and any("in the clear" in n for n in p["not_protected"])


@pytest.mark.parametrize("t", [16385, 98305, 17])  # 1 mod 2N but not prime; too small
def test_bfv_plaintext_modulus_must_be_a_batching_prime(t):
    with pytest.raises(ParameterError, match="batching prime"):
        BFVParams(N_DEFAULT, COEFF_BITS, t).validate()
