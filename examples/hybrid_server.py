"""Serve a zoo network under `hybrid`: a plan runs some layers in HE and the others in 2PC (CrypTen).

    python examples/hybrid_server.py --port 7560 --plan he:0,ss:1,he:2- --dealer local
    python examples/hybrid_server.py --model minionn-mnist --plan he:0,ss:1-2,he:3,ss:4-5,he:6-7,ss:8,he:9

The second line is GAZELLE's split (linear layers in HE, ReLU and MaxPool in 2PC). Linear-only HE segments
run in BFV, and their hand-overs to and from 2PC hide perfectly (masks uniform mod t); segments with x² run in
CKKS (19-20 bits). `--hiding perfect` refuses a plan that would need a CKKS hand-over. A ReLU or MaxPool in an
HE segment, or a layer the plan leaves out, is refused at start with the layer's name. `--dealer local`
runs the 2PC dealer here: clients then get no input privacy against this server's operator (they are told).
"""
import argparse

import privinfer
from privinfer import zoo

if __name__ == "__main__":  # the 2PC workers are child processes: they must not re-run this script
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="cryptonets-mnist")
    p.add_argument("--plan", default="he:0,ss:1,he:2-")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7560)
    p.add_argument("--dealer", default="local", help="'local' or HOST:PORT of a `privinfer dealer`")
    p.add_argument("--dealer-secret", default=None, help="this server's secret file for a third-party dealer")
    p.add_argument("--hiding", default="best", choices=["best", "perfect", "statistical"])
    a = p.parse_args()
    server = privinfer.Server(zoo.load_model(a.model), "hybrid", a.host, a.port, plan=a.plan, dealer=a.dealer,
                              server_secret=a.dealer_secret, hiding=a.hiding)
    print(f"serving {a.model} with protocol 'hybrid', plan {a.plan}, on {server.host}:{server.port}", flush=True)
    server.serve_forever()
