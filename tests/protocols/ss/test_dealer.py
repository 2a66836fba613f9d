"""Whose dealer is it? The `ss` dealer choice, its authentication by both parties, and the attacks on it.

The attacks: a wrong secret on either side, a server that points the client at a dealer of its own
(an impostor that answers any key id), a server that runs a local dealer while the client pinned a
third-party one, a relaying server that alters or replays handshake messages, and a client secret that
could leak in HELLO. Each must fail with a typed error before any CrypTen process (hence any share)
exists. One full session checks that correct pins give the reference logits.
"""
from __future__ import annotations

import os
import socket
import threading

import numpy as np
import pytest
import torch
from torch import nn

from privinfer import PeerError, PrivinferError, compile_model, run_reference
from privinfer.protocols import get_protocol
from privinfer.protocols.ss import worker as ss_worker
from privinfer.protocols.ss.auth import (DealerAuthError, DealerChoiceError, DealerHandshake, PartyHandshake,
                                         key_id, load_secret, new_secret_file, secret_table)
from privinfer.protocols.ss.dealer import DealerServer
from privinfer.server import Server
from privinfer.session import connect
from privinfer.transport import frames

TOL = 1e-2
MPC_TIMEOUT = 20.0
RDV = "tcp://127.0.0.1:1"


def tiny_net():
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4))
    return compile_model(m, (1, 8, 8))


@pytest.fixture
def secrets_dir(tmp_path):
    for who in ("server", "client", "other"):
        new_secret_file(str(tmp_path / f"{who}.psk"))
    return tmp_path


@pytest.fixture
def spawned(monkeypatch):
    """Roles of every CrypTen child process started in this process (server in thread mode)."""
    roles: list[str] = []
    orig = ss_worker.ChildProcess.__init__

    def counting(self, target, args, role):
        roles.append(role)
        orig(self, target, args, role)
    monkeypatch.setattr(ss_worker.ChildProcess, "__init__", counting)
    return roles


# --- the handshake itself (no processes) --------------------------------------------------------------
def run_handshake(party_secret: bytes, dealer_table: dict, rank=1, tamper=None):
    p = PartyHandshake(rank, party_secret, RDV)
    d = DealerHandshake(dealer_table, rank, RDV)
    hello = p.hello()
    reply = d.answer(hello)
    if tamper:
        reply = tamper(reply)
    confirm, key_p = p.finish(reply)
    return key_p, d.confirm(confirm)


def test_handshake_agrees_on_a_fresh_key_only_with_the_right_secret():
    s, other = os.urandom(32), os.urandom(32)
    k1, k1_d = run_handshake(s, secret_table([s]))
    k2, _ = run_handshake(s, secret_table([s]))
    assert k1 == k1_d and len(k1) == 32 and k1 != k2          # fresh nonces: a new key every session
    # an impostor that answers the party's key id with a secret of its own
    with pytest.raises(DealerAuthError, match="failed authentication"):
        run_handshake(s, {key_id(s): other})
    # a dealer that does not know the party's secret at all
    with pytest.raises(DealerAuthError, match="knows no client secret"):
        run_handshake(s, secret_table([other]))
    # a server secret is not accepted for the client's role (and vice versa): separate tables per rank
    with pytest.raises(DealerAuthError, match="expected party 1"):
        DealerHandshake(secret_table([s]), 1, RDV).answer(PartyHandshake(0, s, RDV).hello())


def test_relaying_server_cannot_alter_or_replay_the_handshake():
    s = os.urandom(32)
    table = secret_table([s])
    flip = lambda h: h[:-1] + ("0" if h[-1] != "0" else "1")  # noqa: E731
    for field in ("nonce_d", "mac_d"):
        with pytest.raises(DealerAuthError):
            run_handshake(s, table, tamper=lambda r, f=field: {**r, f: flip(r[f])})
    # a reply recorded from an earlier session, replayed to a new hello
    old = DealerHandshake(table, 1, RDV).answer(PartyHandshake(1, s, RDV).hello())
    with pytest.raises(DealerAuthError):
        PartyHandshake(1, s, RDV).finish(old)
    # the client's hello spliced into another session (another rendezvous): the dealer refuses it,
    # and a dealer answer for another rendezvous fails the client's check
    p = PartyHandshake(1, s, RDV)
    with pytest.raises(DealerAuthError, match="rendezvous"):
        DealerHandshake(table, 1, "tcp://127.0.0.1:2").answer(p.hello())
    other = DealerHandshake(table, 1, "tcp://127.0.0.1:2")
    with pytest.raises(DealerAuthError):
        p.finish(other.answer({**p.hello(), "rendezvous": "tcp://127.0.0.1:2"}))
    # the party's confirmation is checked too (the dealer authenticates the party)
    d = DealerHandshake(table, 1, RDV)
    p = PartyHandshake(1, s, RDV)
    p.finish(d.answer(p.hello()))
    with pytest.raises(DealerAuthError, match="party 1 failed"):
        d.confirm({"mac_p": "00" * 32})
    for bad in ({}, {"nonce_d": "zz" * 32, "mac_d": "00" * 32}, {"nonce_d": 5, "mac_d": None}, None):
        with pytest.raises(DealerAuthError):
            PartyHandshake(1, s, RDV).finish(bad)


def test_secret_files_and_dealer_configuration(tmp_path, secrets_dir):
    (tmp_path / "short.psk").write_text("00" * 8)
    (tmp_path / "text.psk").write_text("not hex at all")
    for bad, why in ((tmp_path / "short.psk", "at least 128"), (tmp_path / "text.psk", "hex"),
                     (tmp_path / "missing.psk", "does not exist"), (3, "path or bytes")):
        with pytest.raises(PrivinferError, match=why):
            load_secret(str(bad) if not isinstance(bad, int) else bad)
    assert oct(os.stat(secrets_dir / "server.psk").st_mode & 0o777) == "0o600"
    with pytest.raises(FileExistsError):
        new_secret_file(str(secrets_dir / "server.psk"))              # never overwritten
    with pytest.raises(DealerChoiceError, match="at least one server secret"):
        DealerServer("127.0.0.1", 0, server_secrets=[str(secrets_dir / "server.psk")])
    with pytest.raises(DealerChoiceError, match="impersonate"):
        DealerServer("127.0.0.1", 0, server_secrets=[str(secrets_dir / "server.psk")],
                     client_secrets=[str(secrets_dir / "server.psk")])


def test_server_must_choose_its_dealer(secrets_dir):
    cls = get_protocol("ss")
    with pytest.raises(DealerChoiceError, match="dealer='local'.*no input privacy.*server_secret"):
        cls(tiny_net())
    with pytest.raises(DealerChoiceError, match="needs server_secret"):
        cls(tiny_net(), dealer="127.0.0.1:7551")
    with pytest.raises(DealerChoiceError, match="has none"):
        cls(tiny_net(), dealer="local", server_secret=str(secrets_dir / "server.psk"))
    cls(tiny_net(), dealer="127.0.0.1:7551", server_secret=str(secrets_dir / "server.psk"))
    cls(tiny_net(), dealer="local")


def test_local_truncation_wraps_as_the_cap_assumes():
    """CrypTen's two-party truncation (each share divided locally, as `div_` does with world size 2) fails
    with probability |y|*2^(2f-64) per value: the formula behind the precision cap, checked by sampling."""
    rng = np.random.default_rng(0)
    n = 400_000
    for f, y, expect in ((28, 4.0, 4.0 * 2.0 ** (56 - 64)), (16, 30.0, 0.0)):
        v = torch.full((n,), int(y * 2 ** (2 * f)), dtype=torch.long)
        r = torch.from_numpy(rng.integers(-2 ** 63, 2 ** 63 - 1, n, dtype=np.int64, endpoint=True))
        s0, s1 = r, v - r                                                  # int64 arithmetic wraps mod 2^64
        got = s0.div(2 ** f, rounding_mode="trunc") + s1.div(2 ** f, rounding_mode="trunc")
        wrong = float(((got - int(y * 2 ** f)).abs() > 2).double().mean())
        assert wrong == pytest.approx(expect, rel=0.15, abs=1e-5), (f, wrong, expect)


def test_precision_bits_cap_follows_the_architecture(spawned):
    from privinfer import zoo
    from privinfer.errors import ParameterError
    from privinfer.protocols.ss import check_precision, max_precision_bits
    cls = get_protocol("ss")
    assert cls.validate_client_options({"precision_bits": 20})["precision_bits"] == 20
    for bits in (21, 30):
        with pytest.raises(ParameterError, match=r"1\.\.20.*wraps around the 64-bit ring"):
            cls.validate_client_options({"precision_bits": bits})
    caps = {n: max_precision_bits(zoo.load_model(n)) for n in ("deepsecure-mnist", "minionn-mnist", "minionn-cifar")}
    assert caps == {"deepsecure-mnist": 20, "minionn-mnist": 19, "minionn-cifar": 17}
    check_precision(zoo.load_model("minionn-cifar"), 16)                  # the default fits every zoo network
    # the server refuses a client's f above its network's cap before any CrypTen process starts
    srv = Server(zoo.load_model("minionn-cifar"), "ss", dealer="local", timeout=30).start()
    try:
        with pytest.raises(PeerError, match="ParameterError.*cap for this network"):
            connect("127.0.0.1", srv.port, "ss", timeout=30, precision_bits=18)
        assert spawned == []
    finally:
        srv.shutdown()


def test_client_secret_never_leaves_the_client(secrets_dir):
    """The HELLO a client sends carries no trace of its dealer secret (a fake server records it)."""
    secret = load_secret(str(secrets_dir / "client.psk"))
    with socket.create_server(("127.0.0.1", 0)) as lst:
        got = {}

        def fake_server():
            conn, _ = lst.accept()
            with conn:
                head = conn.recv(frames.HEADER.size, socket.MSG_WAITALL)
                _, n = frames.decode_header(head, 1 << 20)
                got["hello"] = conn.recv(n, socket.MSG_WAITALL)
        t = threading.Thread(target=fake_server)
        t.start()
        with pytest.raises(PrivinferError):
            connect("127.0.0.1", lst.getsockname()[1], "ss", timeout=5, client_secret=str(secrets_dir / "client.psk"))
        t.join(10)
    hello = got["hello"]
    assert b"client_secret" not in hello and b"client.psk" not in hello
    assert secret.hex().encode() not in hello and secret not in hello
    # and a server refuses a HELLO that carries one anyway
    proto = get_protocol("ss")(tiny_net(), dealer="local")
    with pytest.raises(PrivinferError, match="must stay on the client"):
        proto.server_side(proto.validate_client_options({"client_secret": "x"}))


# --- sessions ------------------------------------------------------------------------------------------
def dealer_service(d, client="client.psk", server="server.psk", impostor=False):
    srv = DealerServer("127.0.0.1", 0, server_secrets=[str(d / server)], client_secrets=[str(d / client)],
                       mpc_timeout=MPC_TIMEOUT)
    if impostor:  # answers whatever key id a client names, with a secret of its own
        class AnyKey(dict):
            def get(self, k, default=None):
                return b"impostor-secret-" + bytes(16)
        srv.client_secrets = AnyKey()
    return srv


def ss_server(g, d, dealer, secret="server.psk"):
    return Server(g, "ss", dealer=f"127.0.0.1:{dealer.port}", server_secret=str(d / secret),
                  mpc_timeout=MPC_TIMEOUT, timeout=60).start()


def fuzz_relay(address, examples: int = 40) -> None:
    """Valid HELLO, then junk where the client's dealer handshake belongs; every reply must be well-formed."""
    from hypothesis import given, settings, strategies as st
    field = st.one_of(st.integers(-2, 3), st.text(max_size=8), st.just("00" * 32), st.just(RDV), st.none())
    inner = st.dictionaries(st.sampled_from(["rank", "key_id", "rendezvous", "nonce_p", "mac_p"]), field, max_size=5)
    msg = st.dictionaries(st.sampled_from(["dealer_hello", "dealer_confirm", "ready"]),
                          st.one_of(inner, field), max_size=2)
    body = frames.encode_json({"protocol": "ss", "options": {}})
    hello = frames.encode_header(frames.FrameType.HELLO, len(body)) + body

    @settings(max_examples=examples, deadline=None, derandomize=True)
    @given(st.lists(msg, min_size=1, max_size=3))
    def run(msgs):
        data = hello + b"".join(frames.encode_header(frames.FrameType.JSON, len(m)) + m
                                for m in map(frames.encode_json, msgs))
        with socket.create_connection(address, timeout=10) as c:
            c.sendall(data)
            c.shutdown(socket.SHUT_WR)
            reply = b""
            while chunk := c.recv(65536):
                reply += chunk
        pos = 0
        while pos + frames.HEADER.size <= len(reply):
            ftype, n = frames.decode_header(reply[pos:pos + frames.HEADER.size], 1 << 24)
            if ftype == frames.FrameType.ERROR:
                assert frames.decode_json(reply[pos + frames.HEADER.size:pos + frames.HEADER.size + n])["type"]
            pos += frames.HEADER.size + n
    run()


def test_authenticated_third_party_dealer_end_to_end(secrets_dir):
    """Junk in the relayed handshake first (no dealer process may start from it), then correct pins."""
    g = tiny_net()
    x = np.random.default_rng(7).uniform(0, 1, (2, *g.input_shape))
    with dealer_service(secrets_dir) as dealer:
        srv = ss_server(g, secrets_dir, dealer)
        try:
            fuzz_relay(srv.address)
            assert dealer.sessions == 0 and dealer.failed > 0
            refused = dealer.auth_failures
            with connect("127.0.0.1", srv.port, "ss", client_secret=str(secrets_dir / "client.psk")) as s:
                p = s.stats.privacy
                assert p["guarantee"] == "cryptographic-trusted-dealer" and p["input_private"] is True
                assert "authenticated by this client" in p["dealer"]
                np.testing.assert_allclose(s.infer(x), run_reference(g, x), atol=TOL)
                t = s.client.last
                assert t["online_dealer_messages"] == 0 and t["offline_dealer_messages"] == 2
            assert dealer.sessions == 1 and dealer.auth_failures == refused
        finally:
            srv.shutdown()


@pytest.mark.parametrize("case", ["server-secret", "client-secret", "impostor", "no-client-secret"])
def test_mismatch_fails_before_any_share(case, secrets_dir, spawned):
    g = tiny_net()
    server_secret = "other.psk" if case == "server-secret" else "server.psk"
    client_secret = {"client-secret": "other.psk", "no-client-secret": None}.get(case, "client.psk")
    with dealer_service(secrets_dir, impostor=case == "impostor") as dealer:
        srv = ss_server(g, secrets_dir, dealer, server_secret)
        try:
            with pytest.raises((DealerAuthError, PeerError)) as err:
                connect("127.0.0.1", srv.port, "ss", timeout=30,
                        client_secret=str(secrets_dir / client_secret) if client_secret else None)
            msg = str(err.value)
            if case == "server-secret":   # the server refuses; the client hears why
                assert isinstance(err.value, PeerError) and "DealerAuthError" in msg and "refused this server" in msg
            else:                         # the client itself detects it
                assert isinstance(err.value, DealerAuthError)
                assert {"client-secret": "knows no client secret", "impostor": "failed authentication",
                        "no-client-secret": "pass client_secret"}[case] in msg
            assert spawned == [] and dealer.sessions == 0      # no CrypTen process: no share ever moved
        finally:
            srv.shutdown()


def test_client_that_pinned_a_dealer_refuses_a_server_run_dealer(secrets_dir, spawned):
    g = tiny_net()
    srv = Server(g, "ss", dealer="local", mpc_timeout=MPC_TIMEOUT, timeout=60).start()
    try:
        with pytest.raises(DealerAuthError, match="runs its own dealer"):
            connect("127.0.0.1", srv.port, "ss", timeout=30, client_secret=str(secrets_dir / "client.psk"))
        assert "party1" not in spawned   # the client never joined: none of its shares exist
    finally:
        srv.shutdown()


def test_cli_serve_needs_a_dealer_choice_and_dealer_makes_secrets(tmp_path, capsys):
    """`privinfer serve|dealer` (in-process `main`, which maps errors to one line and exit code 2)."""
    from privinfer.cli import main
    assert main(["serve", "--model", "minionn-mnist", "--protocol", "ss", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "DealerChoiceError" in err and "dealer='local'" in err and "no input privacy" in err
    assert main(["serve", "--model", "minionn-mnist", "--protocol", "plain", "--dealer", "local"]) == 2
    assert "--protocol ss and hybrid only" in capsys.readouterr().err
    assert main(["dealer", "--new-secret", str(tmp_path / "s.psk")]) == 0
    assert key_id(load_secret(str(tmp_path / "s.psk"))) in capsys.readouterr().out
    assert main(["dealer", "--new-secret", str(tmp_path / "s.psk")]) == 2          # never overwritten
    assert "exists" in capsys.readouterr().err
    assert main(["dealer", "--port", "0", "--server-secret", str(tmp_path / "s.psk")]) == 2
    assert "client secret" in capsys.readouterr().err
