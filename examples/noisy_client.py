"""Classify digits on a `noisy` server with epsilon-DP features. Run: python examples/noisy_client.py --port 7703

Each image costs --epsilon (Laplace, local DP w.r.t. any two inputs); --budget caps the session total and
refuses a query that would exceed it before anything is sent. The noise comes from os.urandom.
"""
import argparse

import privinfer
from privinfer import zoo

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=7703)
p.add_argument("--count", type=int, default=5)
p.add_argument("--epsilon", type=float, default=10.0)
p.add_argument("--budget", type=float, default=100.0, help="total epsilon for the session")
a = p.parse_args()

X, y = zoo.load_dataset("minionn-mnist", "test")
with privinfer.connect(a.host, a.port, "noisy", epsilon=a.epsilon, budget=a.budget) as session:
    for image, label in zip(X[:a.count], y[:a.count]):
        predicted = int(session.infer(image).argmax())
        q, pv = session.stats.last, session.stats.privacy
        print(f"predicted {predicted}  true {label}  {q.latency_s * 1e3:6.1f} ms  {q.bytes_client_to_server} B up  "
              f"epsilon spent {pv['epsilon_total']:g} of {pv['budget']:g}")
    print({k: session.stats.privacy[k] for k in ("mechanism", "epsilon_per_query", "releases", "epsilon_total",
                                                  "clip", "noise_scale", "model_privacy")})
