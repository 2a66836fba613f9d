"""Classify real handwritten digits on a `plain` server. Run: python examples/plain_client.py --port 7700"""
import argparse

import privinfer
from privinfer import zoo

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=7700)
p.add_argument("--count", type=int, default=5)
a = p.parse_args()

X, y = zoo.load_dataset("minionn-mnist", "test")
with privinfer.connect(a.host, a.port, protocol="plain") as session:
    for image, label in zip(X[:a.count], y[:a.count]):
        predicted = int(session.infer(image).argmax())
        q = session.stats.last
        print(f"predicted {predicted}  true {label}  {q.latency_s * 1e3:7.1f} ms  "
              f"{q.bytes_client_to_server:,} B up  {q.bytes_server_to_client:,} B down  {q.rounds} round(s)")
    print(session.stats.privacy)
