"""Protocol names and aliases: `ss` without a dealer selects the dealer-free engine, nothing else moves."""
from privinfer.protocols.base import resolve_protocol


def test_ss_without_dealer_is_cheetah():
    assert resolve_protocol("ss", {"dealer": "none", "mpc_timeout": 5}) == ("cheetah", {"mpc_timeout": 5})


def test_other_settings_are_untouched():
    assert resolve_protocol("ss", {"dealer": "local"}) == ("ss", {"dealer": "local"})
    assert resolve_protocol("he", {"dealer": "none"}) == ("he", {"dealer": "none"})
    assert resolve_protocol("ss", {}) == ("ss", {})


def test_server_built_with_ss_dealer_none_runs_cheetah():
    from privinfer import zoo
    from privinfer.server import Server
    with Server(zoo.load_model("deepsecure-mnist"), "ss", port=0, dealer="none") as srv:
        assert srv.protocol_cls.name == "cheetah"
