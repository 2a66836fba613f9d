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
# a TCP echo for the link checks: serves argv[3] connections on (argv[1], argv[2]), prints "up" once it listens
ECHO = r'''
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(4); print("up", flush=True)
for _ in range(int(sys.argv[3])):
    c, _ = s.accept(); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        b = c.recv(1 << 20)
        if not b: break
        c.sendall(b)
'''
# a gloo ping-pong (what CrypTen's parties exchange): rank, address, port, rounds, interface; rank 1 prints seconds
GLOO = r'''
import os, sys, torch, torch.distributed as dist
rank, addr, port, rounds = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
os.environ["GLOO_SOCKET_IFNAME"] = sys.argv[5]
dist.init_process_group("gloo", init_method=f"tcp://{addr}:{port}", rank=rank, world_size=2)
t = torch.zeros(1)
dist.barrier()
import time; t0 = time.perf_counter()
for _ in range(rounds):
    if rank == 0:
        dist.send(t, 1); dist.recv(t, 1)
    else:
        dist.recv(t, 0); dist.send(t, 0)
if rank == 1: print(f"{time.perf_counter() - t0:.6f}", flush=True)
dist.destroy_process_group()
'''


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


def tcp_rounds(ip: str, port: int, rounds: int) -> float:
    """Seconds for `rounds` 1-byte TCP ping-pongs to an ECHO at (ip, port), after one warm-up exchange."""
    import socket
    import time
    with socket.create_connection((ip, port), timeout=60) as c:
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        c.sendall(b"x"), c.recv(1)
        t0 = time.perf_counter()
        for _ in range(rounds):
            c.sendall(b"x")
            c.recv(1)
        return time.perf_counter() - t0


def _reap(proc: subprocess.Popen, wait: float) -> None:
    """Wait for a check's peer process to exit; kill it past `wait` seconds (nothing outlives a check)."""
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def gloo_rounds(ns: str, ip: str, port: int, rounds: int) -> float:
    """Seconds for `rounds` gloo send/recv ping-pongs between a rank in the namespace and one here."""
    tag = ns.split("-", 1)[1]
    r0 = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", GLOO, "0", ip, str(port), str(rounds),
                           f"pin{tag}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        try:
            r1 = subprocess.run([sys.executable, "-c", GLOO, "1", ip, str(port), str(rounds), f"pih{tag}"],
                                capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            raise PrivinferError(f"the gloo link check did not finish in 120 s (its peer in the namespace exited "
                                 f"with {r0.poll()})") from None
        if r1.returncode:
            raise PrivinferError(f"the gloo link check failed: {r1.stderr.strip()[-500:]}")
        return float(r1.stdout.strip().splitlines()[-1])
    finally:
        _reap(r0, 30)


def link_rtt_ms(ns: str, ip: str, port: int, rounds: int = 50, gloo: bool = False) -> dict:
    """The round trip the emulated link delivers (ms), as the mean of `rounds` ping-pongs: {"tcp": raw TCP (what
    privinfer's channel, SPU and a dealer use), "gloo": gloo send/recv (CrypTen's parties), when asked}.
    Why measure it: the relay's own per-packet cost (a Python process waking for every packet, both ways) adds
    about 0.5-1 ms per TCP round trip and 1-3.5 ms per gloo round trip to the nominal RTT (idle machine, `lan`):
    nothing on `wan` (40 ms) but several times `lan`'s 0.5 ms. The planner's prediction for the link as measured
    uses these figures (`privinfer bench`), beside the one for the nominal link."""
    echo = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", ECHO, ip, str(port), "1"],
                            stdout=subprocess.PIPE, text=True)
    try:
        if echo.stdout.readline().strip() != "up":
            raise PrivinferError("the link check's echo did not start in the namespace")
        out = {"tcp": 1e3 * tcp_rounds(ip, port, rounds) / rounds}
    finally:
        _reap(echo, 10)
        echo.stdout.close()
    if gloo:
        out["gloo"] = 1e3 * gloo_rounds(ns, ip, port + 1, rounds) / rounds
    return out


@contextmanager
def server_in_namespace(graph_path: str, protocol: str, options: dict, profile: NetworkProfile,
                        port: int = 7700, timeout: float = 600.0, on_start=None, workers: int = 0, on_link=None):
    """Run `privinfer serve` inside the namespace; yield (host, port) for the client.

    `on_start(pid)` is called with the server process's pid (benchmarks charge its tree to the server).
    `on_link`, when given, is called as on_link(ns, ip) before the server starts (e.g. to measure the link).
    `workers=0`: one server process, as on loopback (a benchmark measures one session, not a pool)."""
    import json
    with namespace(profile) as (ns, ip):
        if on_link is not None:
            on_link(ns, ip)
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
