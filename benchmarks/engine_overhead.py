"""Per-query cost of a protocol in one process (server in a thread, loopback TCP): wall median and CPU per query.

Why: the engine (`privinfer/protocols/engine.py`) replaced every protocol's own query loop; its overhead would
show first on the fast protocols (`plain`, `noisy`), where a query is ~1 ms, and wall medians on a loaded
2-core machine drown it. CPU seconds per query of the whole process (client + server thread) are steadier.
Run it under two trees side by side, alternating:

    PYTHONPATH=<tree> python benchmarks/engine_overhead.py plain 300
    PYTHONPATH=<tree> python benchmarks/engine_overhead.py hybrid 15     # cryptonets-mnist, he:0,ss:1,he:2-
"""
import json
import statistics
import sys
import time

import privinfer
from privinfer import zoo


def main(proto: str, n: int) -> dict:
    model = "cryptonets-mnist" if proto == "hybrid" else "minionn-mnist"
    g = zoo.load_model(model)
    X, _ = zoo.load_dataset(model, "test")
    opts = {"noisy": {"split": 3, "epsilon": 1.0, "spawn": "thread", "warn": False},
            "hybrid": {"plan": "he:0,ss:1,he:2-", "circuit_privacy": "fast", "dealer": "local"}}.get(
                proto, {"spawn": "thread", "warn": False})
    with privinfer.PrivateSession(g, proto, **opts) as s:
        for i in range(2 if proto == "hybrid" else 20):
            s.infer(X[i % 100])
        t = []
        c0 = time.process_time()
        for i in range(n):
            t0 = time.perf_counter()
            s.infer(X[i % 100])
            t.append(time.perf_counter() - t0)
        cpu = (time.process_time() - c0) / n
        q = s.stats.queries[-1]
    return {"protocol": proto, "model": model, "queries": n, "median_ms": statistics.median(t) * 1e3,
            "cpu_ms_per_query_this_process": cpu * 1e3, "up": q.bytes_client_to_server,
            "down": q.bytes_server_to_client, "rounds": q.rounds}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], int(sys.argv[2]))))
