"""Run the `ss` dealer (CrypTen's trusted third party) as a service, ideally on a third host.

    python examples/ss_dealer.py --host 0.0.0.0 --port 7551

Model servers reach it with the `dealer="HOST:7551"` option (see ss_server.py). Each 2PC session gets
its own dealer process, which joins that session's CrypTen group as rank 2, sends each party a fresh
256-bit key, and answers one batch of correlated randomness per query before the input exists. The
dealer must not collude with either party: whoever runs it could otherwise reconstruct the other side's
secrets. It never sees inputs, weights or outputs.
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privinfer.protocols.ss_dealer import DEFAULT_DEALER_PORT, run_dealer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description="privinfer ss dealer service")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=DEFAULT_DEALER_PORT)
    ap.add_argument("--mpc-timeout", type=float, default=60.0, help="seconds a CrypTen operation may stall")
    ap.add_argument("--gloo-ifname", default=None, help="network interface for gloo (default: the one used)")
    a = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_dealer(a.host, a.port, mpc_timeout=a.mpc_timeout, gloo_ifname=a.gloo_ifname)


if __name__ == "__main__":
    main()
