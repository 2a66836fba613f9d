"""Serve a polynomial zoo network under CKKS HE. Run: python examples/he_server.py --port 7701"""
import argparse

import privinfer
from privinfer import zoo

p = argparse.ArgumentParser()
p.add_argument("--model", default="cryptonets-mnist", help="a polynomial zoo network (x² activations)")
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=7701)
a = p.parse_args()

graph = zoo.load_model(a.model)  # trained weights (shipped, or trained once and cached)
calibration, _ = zoo.load_dataset(a.model, "train")
# CKKS parameters, packing plan and encoded weights are prepared once, here
server = privinfer.Server(graph, "he", a.host, a.port, calibration=calibration[:256])
print(f"serving {a.model} with protocol 'he' on {server.host}:{server.port}", flush=True)
server.serve_forever()
