"""Serve a zoo network under `ss` (2PC on CrypTen): the model owner, CrypTen rank 0.

    python examples/ss_server.py --port 7550 --dealer HOST:7551 --dealer-secret server.psk
    python examples/ss_server.py --port 7550 --dealer local

The dealer must be chosen. A third-party dealer (`privinfer dealer`, see ss_dealer.py) is authenticated
by this server with server.psk and by each client with its own secret. `--dealer local` spawns the dealer
here: convenient, but then clients get no input privacy against this server's operator (and are told so).
"""
import argparse

import privinfer
from privinfer import zoo

if __name__ == "__main__":  # the 2PC workers are child processes: they must not re-run this script
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="minionn-mnist")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7550)
    p.add_argument("--dealer", required=True, help="'local' or HOST:PORT of a `privinfer dealer`")
    p.add_argument("--dealer-secret", default=None, help="this server's secret file for a third-party dealer")
    a = p.parse_args()
    server = privinfer.Server(zoo.load_model(a.model), "ss", a.host, a.port, dealer=a.dealer,
                              server_secret=a.dealer_secret)
    print(f"serving {a.model} with protocol 'ss' on {server.host}:{server.port}, dealer {a.dealer}", flush=True)
    server.serve_forever()
