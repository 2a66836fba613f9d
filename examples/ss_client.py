"""Classify digits on an `ss` server (the input owner, CrypTen rank 1); only this side learns the logits.

    python examples/ss_client.py --port 7550 --dealer-secret client.psk --count 5

With --dealer-secret the client authenticates the server's third-party dealer (and refuses a server that
runs its own); without it, it accepts only a server-run dealer, and `privacy` says what that means.
"""
import argparse

import privinfer
from privinfer import zoo

if __name__ == "__main__":  # the CrypTen party runs in a child process that imports this module
    p = argparse.ArgumentParser()
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7550)
    p.add_argument("--count", type=int, default=5)
    p.add_argument("--precision-bits", type=int, default=16)
    p.add_argument("--dealer-secret", default=None, help="the secret file the dealer's operator gave you")
    a = p.parse_args()

    X, y = zoo.load_dataset("minionn-mnist", "test")
    with privinfer.connect(a.host, a.port, "ss", precision_bits=a.precision_bits,
                           client_secret=a.dealer_secret) as session:
        print(f"set-up {session.stats.setup_s:.2f} s; privacy: {session.stats.privacy}")
        for image, label in zip(X[:a.count], y[:a.count]):
            predicted = int(session.infer(image).argmax())
            q = session.stats.last
            print(f"predicted {predicted}  true {label}  {q.latency_s * 1e3:7.1f} ms (offline {q.offline_s * 1e3:.0f} "
                  f"+ online {q.online_s * 1e3:.0f})  {q.bytes_client_to_server:,} B up  "
                  f"{q.bytes_server_to_client:,} B down  {q.rounds} rounds")
