"""Run the `ss` dealer (CrypTen's trusted third party) as a service, ideally on a third host.

    python examples/ss_dealer.py --new-secret server.psk      # give this file to the model server
    python examples/ss_dealer.py --new-secret client.psk      # give this file to the clients (never the server)
    python examples/ss_dealer.py --host 0.0.0.0 --port 7551 --server-secret server.psk --client-secret client.psk

Model servers reach it with `--dealer HOST:7551 --dealer-secret server.psk` (see ss_server.py), clients
authenticate it with `--dealer-secret client.psk` (ss_client.py); the client's handshake is relayed by the
server, which can neither forge it nor learn the key it yields. Each 2PC session gets its own dealer
process, which joins that session's CrypTen group as rank 2 and answers one batch of correlated randomness
per query before the input exists. The parties' PRG keys are derived from the handshakes, never sent.
The dealer must not collude with either party: it could otherwise reconstruct the other side's secrets.
It never sees inputs, weights or outputs.
"""
import argparse
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privinfer.protocols.ss.auth import new_secret_file  # noqa: E402
from privinfer.protocols.ss.dealer import DEFAULT_DEALER_PORT, run_dealer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description="privinfer ss dealer service")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=DEFAULT_DEALER_PORT)
    ap.add_argument("--mpc-timeout", type=float, default=60.0, help="seconds a CrypTen operation may stall")
    ap.add_argument("--gloo-ifname", default=None, help="network interface for gloo (default: the one used)")
    ap.add_argument("--server-secret", action="append", help="a model server's secret file (repeatable)")
    ap.add_argument("--client-secret", action="append", help="a client's secret file (repeatable)")
    ap.add_argument("--new-secret", metavar="FILE", help="write a fresh 256-bit secret to FILE and exit")
    a = ap.parse_args()
    if a.new_secret:
        print(f"wrote {a.new_secret} (key id {new_secret_file(a.new_secret)})", flush=True)
        return
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    run_dealer(a.host, a.port, mpc_timeout=a.mpc_timeout, gloo_ifname=a.gloo_ifname,
               server_secrets=a.server_secret or [], client_secrets=a.client_secret or [])


if __name__ == "__main__":
    main()
