"""Every protocol names its guarantee with one word from the fixed vocabulary, and the session enforces it."""
import pytest

from privinfer.errors import PrivinferError
from privinfer.privacy.guarantees import GUARANTEES, check_guarantee


def test_vocabulary_is_closed():
    assert check_guarantee({"guarantee": "none"}) == "none"
    for bad in ({}, {"guarantee": "cryptographic (mostly)"}, {"guarantee": None}):
        with pytest.raises(PrivinferError, match="must be one of"):
            check_guarantee(bad)
    assert {"cryptographic", "none", "differential-privacy"} <= set(GUARANTEES)


def test_plain_session_reports_none():
    import privinfer
    from privinfer import zoo
    g = zoo.load_model("secureml-mnist")
    X, _ = zoo.load_dataset("secureml-mnist", "test")
    with privinfer.PrivateSession(g, protocol="plain", spawn="thread") as s:
        s.infer(X[0])
        assert s.stats.privacy["guarantee"] == "none"
