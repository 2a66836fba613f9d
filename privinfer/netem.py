"""Network emulation for benchmarks: the server in its own network namespace behind a rate-limited veth.

Bandwidth is real: `tc tbf` shapes both directions of the veth pair. This kernel has no `netem`, so
propagation delay is added by the client's Channel, which waits one RTT at the start of every round
(a send that follows a receive). Needs root and iproute2; traffic stays on this machine.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
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
    "wan": NetworkProfile("wan", 100.0, 20.0),
    "mobile": NetworkProfile("mobile", 20.0, 60.0),
}


def get_profile(name: str) -> NetworkProfile:
    if name not in PROFILES:
        raise PrivinferError(f"unknown network {name!r}; choose from {sorted(PROFILES)}")
    return PROFILES[name]


def _run(*cmd: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        raise PrivinferError(f"network emulation step failed: {' '.join(cmd)}: {r.stderr.strip()}")


@contextmanager
def namespace(profile: NetworkProfile):
    """Yield (netns name, server address) for a fresh namespace linked to this one by a shaped veth."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        raise PrivinferError("network emulation needs root with iproute2 (ip, tc)")
    tag = f"{os.getpid() % 100000}"
    ns, host_if, ns_if = f"privinfer-{tag}", f"pih{tag}", f"pin{tag}"
    octet = os.getpid() % 250 + 1
    host_ip, ns_ip = f"10.231.{octet}.1", f"10.231.{octet}.2"
    try:
        _run("ip", "netns", "add", ns)
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _run("ip", "link", "set", ns_if, "netns", ns)
        _run("ip", "addr", "add", f"{host_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _run("ip", "netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
        if profile.rate_mbit:
            rate = f"{profile.rate_mbit:g}mbit"
            burst = f"{max(32, int(profile.rate_mbit * 1000 / 8 / 250))}kb"  # ~4 ms of traffic
            for prefix in ((), ("ip", "netns", "exec", ns)):
                dev = host_if if not prefix else ns_if
                _run(*prefix, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", rate, "burst", burst,
                     "latency", "100ms")
        yield ns, ns_ip
    finally:
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
                yield ip, port
            finally:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
