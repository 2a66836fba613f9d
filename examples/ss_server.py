"""Serve a zoo network under `ss` (2PC on CrypTen): the model owner, CrypTen rank 0.

    python examples/ss_server.py --port 7550 [--dealer HOST:7551]

Without --dealer the server spawns a local dealer per session (convenient, but then the client trusts
this server's operator not to inspect it); with --dealer it uses `privinfer dealer` on a third host.
"""
import argparse

import privinfer
from privinfer import zoo

if __name__ == "__main__":  # the 2PC workers are child processes: they must not re-run this script
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="minionn-mnist")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7550)
    p.add_argument("--dealer", default=None, help="HOST:PORT of a dealer service (default: local per session)")
    a = p.parse_args()
    server = privinfer.Server(zoo.load_model(a.model), "ss", a.host, a.port, dealer=a.dealer)
    print(f"serving {a.model} with protocol 'ss' on {server.host}:{server.port}", flush=True)
    server.serve_forever()
