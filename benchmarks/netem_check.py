"""Check the network emulation itself: 100 ping-pongs over each kind of link, against rounds x RTT.

    sudo .venv/bin/python benchmarks/netem_check.py                 # wan, mobile, lan
    sudo .venv/bin/python benchmarks/netem_check.py --profiles wan --rounds 100 --json out.json

Link kinds: a raw TCP socket (what SPU's brpc and a dealer use), privinfer's Channel (typed frames), and
torch.distributed's gloo send/recv (what CrypTen's parties use). One side runs inside the emulated server
namespace, the other here. The emulation passes when every kind takes rounds x RTT within 5 %; the
bandwidth line echoes 8 MB each way and reports the rate each direction reached.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from privinfer import netem  # noqa: E402

PORT = 7998
CHANNEL = r'''
import sys
from privinfer.transport.tcp import listen
from privinfer.transport import Channel
from privinfer.transport.frames import FrameType
s = listen(sys.argv[1], int(sys.argv[2])); print("up", flush=True)
c, _ = s.accept(); ch = Channel(c, timeout=60)
for _ in range(int(sys.argv[3]) + 1):
    ch.send_frame(FrameType.BYTES, ch.recv_frame()[1])
'''


def _in_ns(ns: str, code: str, *args) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", code, *map(str, args)],
                            stdout=subprocess.PIPE, text=True, env=env)


def tcp_pingpong(ip: str, rounds: int) -> tuple[float, float]:
    """(seconds for `rounds` 1-byte ping-pongs, Mbit/s reached per direction echoing 8 MB)."""
    rtt_total = netem.tcp_rounds(ip, PORT, rounds)
    c = socket.create_connection((ip, PORT), timeout=60)
    n, got = 8 << 20, [0]

    def drain():
        while got[0] < n:
            got[0] += len(c.recv(1 << 20))
    th = threading.Thread(target=drain)
    t0 = time.perf_counter()
    th.start()
    c.sendall(b"y" * n)
    th.join()
    rate = n * 8 / (time.perf_counter() - t0) / 1e6
    c.close()
    return rtt_total, rate


def channel_pingpong(ns: str, ip: str, rounds: int) -> float:
    from privinfer.transport.frames import FrameType
    from privinfer.transport.tcp import connect
    srv = _in_ns(ns, CHANNEL, ip, PORT + 1, rounds)
    assert srv.stdout.readline().strip() == "up"
    ch = connect(ip, PORT + 1, timeout=60)
    ch.send_frame(FrameType.BYTES, b"x"), ch.recv_frame()
    t0 = time.perf_counter()
    for _ in range(rounds):
        ch.send_frame(FrameType.BYTES, b"x")
        ch.recv_frame()
    dt = time.perf_counter() - t0
    ch.close()
    srv.wait(30)
    return dt


def gloo_pingpong(ns: str, ip: str, rounds: int) -> float:
    return netem.gloo_rounds(ns, ip, PORT + 2, rounds)


def check(profile: netem.NetworkProfile, rounds: int) -> dict:
    with netem.namespace(profile) as (ns, ip):
        echo = _in_ns(ns, netem.ECHO, ip, PORT, 2)
        assert echo.stdout.readline().strip() == "up"
        tcp, rate = tcp_pingpong(ip, rounds)
        echo.wait(30)
        chan = channel_pingpong(ns, ip, rounds)
        gloo = gloo_pingpong(ns, ip, rounds)
    want = rounds * profile.rtt_ms / 1e3
    links = {"tcp": tcp, "privinfer_channel": chan, "gloo": gloo}
    return {"profile": profile.name, "rtt_ms": profile.rtt_ms, "rate_mbit": profile.rate_mbit, "rounds": rounds,
            "expected_s": want, "measured_s": links,
            "error_pct": {k: round(100 * (v - want) / want, 1) for k, v in links.items()},
            "echo_mbit_per_direction": round(rate, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--profiles", nargs="+", default=["wan", "mobile", "lan"])
    ap.add_argument("--rounds", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    why = netem.available()
    if why:
        sys.exit(f"cannot check the emulation here: {why}")
    out = {"command": "python benchmarks/netem_check.py " + " ".join(sys.argv[1:]),
           "load_average_before": list(os.getloadavg()), "runs": []}
    for name in a.profiles:
        r = check(netem.get_profile(name), a.rounds)
        out["runs"].append(r)
        errs = ", ".join(f"{k} {r['measured_s'][k]:.3f} s ({v:+.1f} %)" for k, v in r["error_pct"].items())
        print(f"{name:7s} {a.rounds} x {r['rtt_ms']:g} ms = {r['expected_s']:.3f} s | {errs} | "
              f"echo {r['echo_mbit_per_direction']} Mbit/s per direction (limit {r['rate_mbit']})", flush=True)
    if a.json:
        a.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
