"""Classify digits on an `he` server: the image is encrypted, only this process can read the logits.

Run: python examples/he_client.py --host 127.0.0.1 --port 7701
"""
import argparse

import privinfer
from privinfer import zoo

p = argparse.ArgumentParser()
p.add_argument("--host", default="127.0.0.1")
p.add_argument("--port", type=int, default=7701)
p.add_argument("--count", type=int, default=5)
a = p.parse_args()

X, y = zoo.load_dataset("digits", "test")
with privinfer.connect(a.host, a.port, protocol="he", packing="latency") as session:
    print(f"keys sent once: {session.stats.setup_bytes:,} B in {session.stats.setup_s:.2f} s")
    for image, label in zip(X[:a.count], y[:a.count]):
        predicted = int(session.infer(image).argmax())
        q = session.stats.last
        print(f"predicted {predicted}  true {label}  {q.latency_s * 1e3:7.1f} ms  "
              f"{q.bytes_client_to_server:,} B up  {q.bytes_server_to_client:,} B down  {q.rounds} round(s)")
    print(session.stats.privacy)
