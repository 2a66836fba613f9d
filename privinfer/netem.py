"""Network emulation for benchmarks: the server in its own network namespace behind a shaped, delayed link.

Bandwidth: `tc tbf` shapes each direction. Delay: this kernel has no `netem`, so the link between the two
namespaces is a pair of TUN devices joined by `netem_relay`, a small process that holds every packet for
RTT/2 per direction. Every socket between the client's side and the server's side pays the RTT: privinfer's
channel, CrypTen's gloo pairs, SPU's brpc links. (Before, only privinfer's channel waited one RTT per round,
so 2PC engines' own rounds were free.) Needs root, iproute2 and /dev/net/tun; traffic stays on this machine.
"""
from __future__ import annotations

import os
import shutil
import itertools
import subprocess
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from .errors import PrivinferError


@dataclass(frozen=True)
class NetworkProfile:
    name: str
    rate_mbit: float | None  # None: unshaped
    rtt_ms: float

    def describe(self) -> str:
        if self.rate_mbit is None:
            return f"{self.name} (unshaped, +{self.rtt_ms:g} ms RTT)"
        return f"{self.name} ({self.rate_mbit:g} Mbit/s each way, {self.rtt_ms:g} ms RTT)"


PROFILES = {
    "loopback": NetworkProfile("loopback", None, 0.0),
    "lan": NetworkProfile("lan", 1000.0, 0.5),
    "wan": NetworkProfile("wan", 100.0, 40.0),
    "mobile": NetworkProfile("mobile", 20.0, 30.0),
}


def get_profile(name: str) -> NetworkProfile:
    if name not in PROFILES:
        raise PrivinferError(f"unknown network {name!r}; choose from {sorted(PROFILES)}")
    return PROFILES[name]


def _run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise PrivinferError(f"network emulation step failed: {' '.join(cmd)}: {r.stderr.strip()}")


RELAY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netem_relay.py")
#: pids of live delay-line relays: a benchmark's case deadline must not kill them, or the link dies silently
#: and the client waits for its socket timeout instead of seeing the killed server's FIN (see benchsuite.runner)
RELAY_PIDS: set[int] = set()
_COUNTER = itertools.count()
TUN_MTU = 65000  # large packets: the relay handles a few thousand per second even at 1 Gbit/s


def available() -> str | None:
    """None when emulation can run here, else why not (callers fall back to loopback and say so)."""
    if os.geteuid() != 0:
        return "network emulation needs root"
    if not shutil.which("ip") or not shutil.which("tc"):
        return "network emulation needs iproute2 (ip, tc)"
    if not os.path.exists("/dev/net/tun"):
        return "network emulation needs /dev/net/tun"
    return None


def _shape(prefix: tuple, dev: str, rate_mbit: float) -> None:
    # tbf drops any packet larger than its bucket: the burst holds two full TUN packets, or ~4 ms of traffic
    burst = max(2 * TUN_MTU, int(rate_mbit * 1e6 / 8 * 0.004))
    _run(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", f"{rate_mbit:g}mbit",
         "burst", str(burst), "latency", "200ms")


def remove_stale() -> list[str]:
    """Delete namespaces and devices left by runs that were killed before their cleanup (named by pid)."""
    gone = []
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    for name in (line.split()[0] for line in out.splitlines() if line.startswith("privinfer-")):
        tag = name.split("-", 1)[1]
        owner = tag.split("x", 1)[0]
        if owner.isdigit() and not os.path.exists(f"/proc/{owner}"):
            pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True).stdout.split()
            for pid in pids:  # a server left running inside: it would hold its memory forever
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            subprocess.run(["ip", "link", "del", f"pih{tag}"], capture_output=True)
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
            gone.append(name)
    return gone


@contextmanager
def namespace(profile: NetworkProfile):
    """Yield (netns name, server address) for a fresh namespace reached through a shaped, delayed link."""
    why = available()
    if why:
        raise PrivinferError(why)
    remove_stale()
    n = next(_COUNTER)  # pid and counter: two namespaces of one process never share names or addresses
    tag = f"{os.getpid()}x{n % 1000}"
    ns, host_if, ns_if = f"privinfer-{tag}", f"pih{tag}", f"pin{tag}"
    net = f"10.{231 + n % 16}.{os.getpid() % 250 + 1}"
    host_ip, ns_ip = f"{net}.1", f"{net}.2"
    in_ns = ("ip", "netns", "exec", ns)
    relay = None
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "tuntap", "add", "dev", host_if, "mode", "tun")
        _run(*in_ns, "ip", "tuntap", "add", "dev", ns_if, "mode", "tun")
        _run("ip", "addr", "add", host_ip, "peer", ns_ip, "dev", host_if)
        _run(*in_ns, "ip", "addr", "add", ns_ip, "peer", host_ip, "dev", ns_if)
        for prefix, dev in (((), host_if), (in_ns, ns_if)):
            _run(*prefix, "ip", "link", "set", dev, "mtu", str(TUN_MTU), "up")
            if profile.rate_mbit:
                _shape(prefix, dev, profile.rate_mbit)
        _run(*in_ns, "ip", "link", "set", "lo", "up")
        relay = subprocess.Popen([sys.executable, RELAY, host_if, ns, ns_if,  # the relay paces at the rate too
                                  str(profile.rtt_ms), str(profile.rate_mbit or 0)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        RELAY_PIDS.add(relay.pid)
        if relay.stdout.readline().strip() != "ready":
            relay.wait(10)
            raise PrivinferError(f"network emulation relay failed: {relay.stderr.read().strip()[-500:]}")
        yield ns, ns_ip
    finally:
        if relay is not None:
            relay.stdin.close()  # EOF stops its loop
            try:
                relay.wait(5)
            except subprocess.TimeoutExpired:
                relay.kill()
                relay.wait()
            RELAY_PIDS.discard(relay.pid)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextmanager
def server_in_namespace(graph_path: str, protocol: str, options: dict, profile: NetworkProfile,
                        port: int = 7700, timeout: float = 600.0, on_start=None, workers: int = 0):
    """Run `privinfer serve` inside the namespace; yield (host, port) for the client.

    `on_start(pid)` is called with the server process's pid (benchmarks charge its tree to the server).
    `workers=0`: one server process, as on loopback (a benchmark measures one session, not a pool)."""
    import json
    with namespace(profile) as (ns, ip):
        cmd = ["ip", "netns", "exec", ns, sys.executable, "-m", "privinfer", "serve", "--model", graph_path,
               "--protocol", protocol, "--host", ip, "--port", str(port), "--timeout", str(timeout),
               "--workers", str(workers)]
        for k, v in options.items():
            cmd += ["-o", f"{k}={json.dumps(v)}"]
        with tempfile.TemporaryFile("w+") as err:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True)
            try:
                if on_start is not None:
                    on_start(proc.pid)
                line = proc.stdout.readline()
                if "serving" not in line:
                    proc.wait(10)
                    err.seek(0)
                    raise PrivinferError(f"server in namespace failed to start: {err.read().strip()[-500:]}")
                # drain what the server prints next (progress, warnings): a full pipe would block it
                threading.Thread(target=proc.stdout.read, daemon=True, name="privinfer-netem-drain").start()
                yield ip, port
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
