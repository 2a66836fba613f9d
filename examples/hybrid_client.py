"""Classify digits on a `hybrid` server; the plan comes from the server and is checked against the
public architecture. Only this side learns the logits.

    python examples/hybrid_client.py --port 7560 --count 5
"""
import argparse

import privinfer
from privinfer import zoo

if __name__ == "__main__":  # the CrypTen party runs in a child process that imports this module
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7560)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--dealer-secret", default=None, help="the secret file the dealer's operator gave you")
    a = p.parse_args()

    X, y = zoo.load_dataset("minionn-mnist", "test")  # any MNIST-shaped zoo network: same digits
    with privinfer.connect(a.host, a.port, "hybrid", client_secret=a.dealer_secret) as session:
        print(f"set-up {session.stats.setup_s:.2f} s; plan {session.stats.privacy['plan']}; "
              f"privacy: {session.stats.privacy['guarantee']}")
        for image, label in zip(X[:a.count], y[:a.count]):
            predicted = int(session.infer(image).argmax())
            q = session.stats.last
            print(f"predicted {predicted}  true {label}  {q.latency_s * 1e3:7.1f} ms  {q.bytes_client_to_server:,} B up"
                  f"  {q.bytes_server_to_client:,} B down  {q.rounds} rounds")
        print(f"conversions: {session.stats.privacy['conversions']}")
