"""The emulated link delays every socket, not only privinfer's channel, and leaves nothing behind.

Timing here is a lower bound only (a round trip over a link with RTT r cannot take less than r); the
5 % accuracy check is a benchmark (`benchmarks/netem_check.py`), not a timed test.
"""
import subprocess
import sys

import pytest

from privinfer import netem

pytestmark = pytest.mark.skipif(netem.available() is not None, reason=str(netem.available()))



def _namespaces() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return {l.split()[0] for l in out.splitlines() if l.startswith("privinfer-")}


def test_a_plain_socket_pays_the_rtt_and_everything_is_removed():
    rtt_ms, rounds = 20.0, 10
    with netem.namespace(netem.NetworkProfile("test", 100.0, rtt_ms)) as (ns, ip):
        srv = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", netem.ECHO, ip, "7997", "1"],
                               stdout=subprocess.PIPE, text=True)
        assert srv.stdout.readline().strip() == "up"
        took = netem.tcp_rounds(ip, 7997, rounds)  # a socket privinfer's Channel knows nothing of
        srv.wait(10)
        assert ns in _namespaces()
    assert took >= rounds * rtt_ms / 1e3, took
    assert ns not in _namespaces()
    tag = ns.split("-", 1)[1]  # this run's relay (others may run concurrently) has exited
    assert subprocess.run(["pgrep", "-f", f"netem_relay.py pih{tag} "], capture_output=True).returncode != 0


def test_namespaces_of_killed_runs_are_removed():
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs: its namespace is stale
    name = f"privinfer-{dead.pid}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        assert name in netem.remove_stale()
        assert name not in _namespaces()
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def test_two_namespaces_of_one_process_do_not_collide():
    prof = netem.NetworkProfile("test", None, 1.0)
    with netem.namespace(prof) as (ns1, ip1), netem.namespace(prof) as (ns2, ip2):
        assert ns1 != ns2 and ip1 != ip2
        assert {ns1, ns2} <= _namespaces()
    assert not {ns1, ns2} & _namespaces()


def test_the_measured_link_rtt_is_at_least_the_nominal_one():
    """What `privinfer bench` prices an emulated link with (`link_rtt_ms`): a real round trip, never below RTT."""
    with netem.namespace(netem.NetworkProfile("test", 100.0, 10.0)) as (ns, ip):
        ms = netem.link_rtt_ms(ns, ip, 7996, rounds=10, gloo=True)
    assert set(ms) == {"tcp", "gloo"}
    assert all(10.0 <= v < 1000.0 for v in ms.values()), ms
