"""`session.py` as a client that says protocol="auto": the server's planner chooses, within what the client
accepted (issue 11; found by review: a server could have chosen `plain` or a DP release for the client)."""
import pytest

from privinfer.errors import PrivacyChoiceError
from privinfer.session import _accept_auto_choice


def test_auto_never_accepts_plain():
    with pytest.raises(PrivacyChoiceError, match="plain"):
        _accept_auto_choice("plain", {}, {})


@pytest.mark.parametrize("protocol,info", [("noisy", {}), ("hybrid", {"plan": "he:0-2,noisy:3-"})])
def test_auto_accepts_a_dp_release_only_with_the_clients_epsilon(protocol, info):
    with pytest.raises(PrivacyChoiceError, match="epsilon"):
        _accept_auto_choice(protocol, info, {})
    _accept_auto_choice(protocol, info, {"epsilon": 2.0})


@pytest.mark.parametrize("protocol,info", [("ss", {}), ("he", {}), ("hybrid", {"plan": "ss:0-1,he:2-4,ss:5"})])
def test_auto_accepts_cryptographic_choices(protocol, info):
    _accept_auto_choice(protocol, info, {})


def test_auto_keeps_every_protocols_local_secrets():
    """With "auto" the protocol is unknown when HELLO leaves: no protocol's local-only option may go out
    (a fake server records the HELLO, then names `plain`, which the client refuses)."""
    import socket
    import threading

    from privinfer.session import connect
    from privinfer.transport import Channel, FrameType
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    seen = {}

    def serve():
        conn, _ = srv.accept()
        ch = Channel(conn, timeout=10)
        seen.update(ch.recv_json(FrameType.HELLO))
        ch.send_json({"protocol": "plain", "graph": {}, "info": {}}, FrameType.WELCOME)
        try:
            ch.recv_json()
        except Exception:
            pass
        ch.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    with pytest.raises(PrivacyChoiceError):
        connect("127.0.0.1", srv.getsockname()[1], "auto", client_secret="/home/me/client.psk", epsilon=1.0)
    t.join(10)
    srv.close()
    assert seen["protocol"] == "auto" and "client_secret" not in seen["options"] and seen["options"]["epsilon"] == 1.0


def test_a_private_sessions_server_takes_no_second_session():
    """A one-machine session's server is its alone (its options, e.g. `he` batch packing, are the session's own
    choices): another local process that finds the loopback port is refused while the session lasts."""
    import numpy as np
    import torch
    from torch import nn

    import privinfer
    from privinfer.errors import PeerResourceLimitError
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    m.input_shape = (1, 4, 4)
    with privinfer.PrivateSession(m, "plain", spawn="thread", warn=False) as s:
        with pytest.raises(PeerResourceLimitError, match="busy"):
            privinfer.connect("127.0.0.1", s._server.port, "plain", warn=False)
        assert s.infer(np.zeros((1, 1, 4, 4))).shape == (1, 3)  # the session itself is unaffected
