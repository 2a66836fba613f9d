"""Interleaved A/B of two checkouts of privinfer (e.g. main and a branch) on one protocol and model, query by query.

Why: on a shared machine the load drifts, so two benchmarks run one after the other are not comparable, and one
process cannot import two versions of the library. Here each checkout runs in its own worker process (its own
PYTHONPATH, its own `PrivateSession`: server in a spawned process, loopback TCP) and the driver asks them for one
query each, alternately, so both see the same load. The first round warms up. Optionally `ss` from checkout A runs
in the same rotation as a load reference, and further arms (`--arm`) with options of their own, e.g. the same
checkout with `prefetch=1`. `--gap S` waits S seconds before each query (every arm alike): what a session with
gaps between queries sees, so that work made between queries (prefetch) is off the query's path.

    python benchmarks/ab_checkouts.py --a /tmp/main_tree --b . --pairs 8 \
        --protocol hybrid -o plan=he:0,ss:1-2,he:3,ss:4-5,he:6-7,ss:8,he:9 [--with-ss] \
        [--arm "B+prefetch,.,hybrid,prefetch=1" --arm "ss+prefetch,.,ss,prefetch=1" --gap 0.5]

Prints one JSON line: the median latency of each arm, the median of the per-round ratios B/A, and the load.
"""
import argparse
import json
import os
import subprocess
import sys
import time


def worker(model: str, protocol: str, opts: dict) -> None:
    import numpy as np
    from privinfer import PrivateSession
    from privinfer.zoo import load_dataset, load_model
    g = load_model(model)
    X, _ = load_dataset(model, "test")
    s = PrivateSession(g, protocol, warn=False, **opts)
    print(json.dumps({"ready": True}), flush=True)
    try:
        for i, line in enumerate(sys.stdin):
            if line.strip() != "q":
                break
            t0 = time.perf_counter()
            s.infer(X[:1])
            dt = time.perf_counter() - t0
            q = s.stats.last
            print(json.dumps({"s": dt, "up": q.bytes_client_to_server, "down": q.bytes_server_to_client,
                              "rounds": q.rounds, "offline_s": q.offline_s, "online_s": q.online_s}), flush=True)
    finally:
        s.close()


def _spawn(tree: str, model: str, protocol: str, opts: dict) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", "--model", model, "--protocol", protocol,
                          "--opts", json.dumps(opts)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                         env=env, cwd=os.path.abspath(tree))
    return p


def _ask(p: subprocess.Popen) -> dict:
    p.stdin.write("q\n")
    p.stdin.flush()
    line = p.stdout.readline()
    if not line:
        raise RuntimeError("a worker died")
    return json.loads(line)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--a", required=False)
    ap.add_argument("--b", required=False)
    ap.add_argument("--model", default="minionn-mnist")
    ap.add_argument("--protocol", default="hybrid")
    ap.add_argument("-o", action="append", default=[], help="server/client option k=v (as privinfer bench)")
    ap.add_argument("--pairs", type=int, default=8)
    ap.add_argument("--with-ss", action="store_true", help="also run ss from checkout A in the rotation")
    ap.add_argument("--arm", action="append", default=[],
                    help="another arm: NAME,TREE,PROTOCOL[,k=v...] (its options on top of -o when PROTOCOL is "
                         "--protocol; repeatable)")
    ap.add_argument("--gap", type=float, default=0.0, help="seconds to wait before each query")
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--opts", default="{}")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    if a.worker:
        worker(a.model, a.protocol, json.loads(a.opts))
        return
    opts = dict(kv.split("=", 1) for kv in a.o)
    arms = {"A": _spawn(a.a, a.model, a.protocol, opts), "B": _spawn(a.b, a.model, a.protocol, opts)}
    if a.with_ss:
        arms["ss(A)"] = _spawn(a.a, a.model, "ss", {})
    for spec in a.arm:
        name, tree, proto, *kv = spec.split(",")
        own = dict(x.split("=", 1) for x in kv)  # on top of -o when the arm runs --protocol
        arms[name] = _spawn(tree, a.model, proto, {**opts, **own} if proto == a.protocol else own)
    res = {k: [] for k in arms}
    loads = []
    try:
        for p in arms.values():
            if not json.loads(p.stdout.readline()).get("ready"):
                raise RuntimeError("a worker did not start")
        for i in range(a.pairs + 1):
            order = list(arms) if i % 2 == 0 else list(reversed(arms))  # neither arm always goes first
            for k in order:
                if a.gap:
                    time.sleep(a.gap)
                r = _ask(arms[k])
                if i:
                    res[k].append(r)
            if i:
                loads.append(os.getloadavg()[0])
    finally:
        for p in arms.values():
            try:
                p.stdin.close()
                p.wait(60)
            except Exception:
                p.kill()
    import numpy as np
    med = {k: float(np.median([r["s"] for r in v])) for k, v in res.items()}
    ratio = float(np.median([b["s"] / x["s"] for b, x in zip(res["B"], res["A"])]))
    last = {k: {f: v[-1][f] for f in ("up", "down", "rounds")} for k, v in res.items()}
    off = {k: float(np.median([r["offline_s"] for r in v])) for k, v in res.items()}
    onl = {k: float(np.median([r.get("online_s", r["s"]) for r in v])) for k, v in res.items()}
    rec = {"model": a.model, "protocol": a.protocol, "opts": opts, "pairs": a.pairs, "a": a.a, "b": a.b,
           "median_s": med, "median_offline_s": off, "median_online_s": onl,
           "median_ratio_b_over_a": ratio, "gap_s": a.gap, "bytes_rounds": last,
           "load_1min": [round(min(loads), 2), round(max(loads), 2)]}
    print(json.dumps(rec))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rec, f, indent=1)


if __name__ == "__main__":
    main()
