"""`transport.ports`: link addresses that a peer sends are parsed strictly, and the hang-up check never blocks."""
import socket
import time

from hypothesis import given, strategies as st

from privinfer.transport.ports import host_port, parse_host_port, peer_pending, plain_ip


@given(st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)), st.integers(1, 65535))
def test_host_port_round_trip(ip, port):
    assert parse_host_port(host_port(str(ip), port)) == (str(ip), port)


@given(st.text(max_size=80))
def test_parse_never_raises_and_accepts_only_literal_ips(text):
    hp = parse_host_port(text)
    assert hp is None or (1 <= hp[1] <= 65535 and plain_ip(hp[0]))


def test_parse_refuses_names_ports_and_junk():
    for bad in ("localhost:80", "1.2.3.4:0", "1.2.3.4:65536", "1.2.3.4", "1.2.3.4:+80", ":80", None, 80, "[::1]80"):
        assert parse_host_port(bad) is None, bad
    assert plain_ip("::ffff:10.0.0.1") == "10.0.0.1"


def test_peer_pending_does_not_block_on_a_socket_with_timeout():
    a, b = socket.socketpair()
    a.settimeout(30)
    t0 = time.monotonic()
    assert peer_pending(a) is False
    assert time.monotonic() - t0 < 1.0
    b.send(b"x")
    time.sleep(0.05)
    assert peer_pending(a) is True
    a.recv(1)
    b.close()
    time.sleep(0.05)
    assert peer_pending(a) is None
