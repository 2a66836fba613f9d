"""Serve a zoo network with the `plain` baseline (no privacy). Run: python examples/plain_server.py --port 7700"""
import argparse

import privinfer
from privinfer import zoo

p = argparse.ArgumentParser()
p.add_argument("--model", default="minionn-mnist")
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=7700)
a = p.parse_args()

server = privinfer.Server(zoo.load_model(a.model), "plain", a.host, a.port)
print(f"serving {a.model} with protocol 'plain' on {server.host}:{server.port}", flush=True)
server.serve_forever()
