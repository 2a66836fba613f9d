"""What authenticating a third-party `ss` dealer costs at set-up, against the server's own (local) dealer.

    .venv/bin/python benchmarks/ss_dealer_setup.py --model minionn-mnist --sessions 5 --json out.json

Alternates sessions with `dealer="local"` and with an authenticated `privinfer dealer` on 127.0.0.1
(`loopback_dealer`: fresh secrets, PSK handshake for both parties, the client's relayed by the server),
in the same run. Per mode: median session set-up time, set-up bytes on the privinfer channel, and for
the third-party dealer the client's handshake time (`dealer_auth_s`: hello -> verified answer) and the
wait for the dealer's session process (`dealer_ready_s`). Each session then runs one query, checked
against the plaintext reference (1e-2), so a set-up that only looks fast cannot pass.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privinfer import PrivateSession, run_reference, zoo  # noqa: E402
from privinfer.protocols.ss.dealer import loopback_dealer  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="minionn-mnist")
    ap.add_argument("--sessions", type=int, default=5, help="sessions per mode")
    ap.add_argument("--json")
    a = ap.parse_args()
    graph = zoo.load_model(a.model)
    X, _ = zoo.load_dataset(a.model, "test")
    ref = run_reference(graph, X[:1])[0]
    runs: dict[str, list[dict]] = {"local": [], "third-party": []}
    with loopback_dealer() as remote:
        for i in range(a.sessions):
            for mode, opts in (("local", {"dealer": "local"}), ("third-party", remote)):
                with PrivateSession(graph, "ss", **opts) as s:
                    err = float(np.max(np.abs(s.infer(X[0]) - ref)))
                    assert err < 1e-2, (mode, err)
                    runs[mode].append({"setup_s": s.stats.setup_s, "setup_bytes": s.stats.setup_bytes,
                                       "guarantee": s.stats.privacy["guarantee"], **s.client.setup_timing})
                print(f"session {i + 1}/{a.sessions} {mode}: set-up {runs[mode][-1]['setup_s']:.2f} s", flush=True)
    out = []
    for mode, rs in runs.items():
        rec = {"protocol": "ss", "model": a.model, "dealer": mode, "sessions": len(rs), "guarantee": rs[0]["guarantee"]}
        for k in ("setup_s", "setup_bytes", "dealer_auth_s", "dealer_ready_s"):
            if k in rs[0]:
                rec[k] = statistics.median(r[k] for r in rs)
        out.append(rec)
        print(json.dumps(rec))
    if a.json:
        Path(a.json).write_text("\n".join(json.dumps(r) for r in out) + "\n")


if __name__ == "__main__":
    main()
