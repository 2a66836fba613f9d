"""Serve minionn-mnist with the `noisy` protocol. Run: python examples/noisy_server.py --port 7703

The client runs layers [0, 3) (conv, ReLU, max-pool) plus a learned 10-d bottleneck head whose weights the
server sends it (model privacy of that prefix is given up), adds Laplace noise, and sends 10 numbers.
At start the server fine-tunes head and suffix on privatized features of the public digits train split
for --epsilon (about a minute, then cached in ~/.cache/privinfer/noisy).
"""
import argparse

import privinfer
from privinfer import zoo

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=7703)
p.add_argument("--epsilon", type=float, default=10.0, help="per-image epsilon the server fine-tunes for")
a = p.parse_args()

server = privinfer.Server(zoo.load_model("minionn-mnist"), "noisy", a.host, a.port, split=3, finetune=True,
                          epsilon=a.epsilon, bottleneck=10)
print(f"serving minionn-mnist with protocol 'noisy' (fine-tuned for epsilon={a.epsilon}) "
      f"on {server.host}:{server.port}", flush=True)
server.serve_forever()
