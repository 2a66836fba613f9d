"""Benchmark the `ss` protocol (2PC on CrypTen with a dealer) against plain CrypTen, in one run.

    .venv/bin/python benchmarks/ss_bench.py --model minionn-mnist --samples 20 --accuracy 450

Baseline ("plain CrypTen"): the same network computed directly with CrypTen tensor ops (conv2d, relu,
max_pool2d, avg_pool2d, matmul, square) in three processes (rank 0 holds the weights, rank 1 the input,
rank 2 CrypTen's stock TTPServer), stock TTP provider with on-demand triples, stock configuration and
communicator; weights are shared once beforehand; one query = share input, forward, reveal to rank 1.
Its bytes/rounds are CrypTen's own counters (`communicator.verbose = True`) per party: rank 1's count is
the 2-party traffic (sent + received), rank 0's adds the TTP traffic.

`ss`: `PrivateSession(graph, "ss")` (server process + its worker + a dealer process, client worker).
Bytes: online client<->server (exact, both directions), offline dealer<->server, privinfer channel.
Prints a table and, with --json, one record per model in the ARCHITECTURE.md benchmark format.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


# --- models and data ----------------------------------------------------------------------------
def load(name: str, seed: int = 0):
    """(graph, X_test, y_test, weights note): zoo weights if available, else a seeded random init."""
    import torch

    from privinfer.model import compile_model
    from privinfer.zoo import build_network, load_dataset
    note = "zoo weights"
    try:
        from privinfer.zoo import load_model
        graph = load_model(name, train_if_missing=False)
    except Exception as e:  # noqa: BLE001 - no weights (yet): architecture is what the cost depends on
        torch.manual_seed(seed)
        graph = compile_model(build_network(name))
        note = f"random init (seed {seed}; {type(e).__name__})"
    X, y = load_dataset(name, "test")
    return graph, X.astype(np.float64), y, note


# --- baseline: stock CrypTen, on-demand TTP triples -----------------------------------------------
def _baseline_party(rank: int, port: int, graph_blob: bytes, X: np.ndarray, n: int, q) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", RENDEZVOUS=f"tcp://127.0.0.1:{port}",
                      DISTRIBUTED_BACKEND="gloo", GLOO_SOCKET_IFNAME="lo")
    import torch
    torch.set_num_threads(1)
    from privinfer._compat.crypten_import import load_crypten
    crypten = load_crypten()
    crypten.cfg.mpc.provider = "TTP"
    crypten.cfg.communicator.verbose = True
    if rank == 2:
        from crypten.mpc.provider.ttp_provider import TTPServer
        TTPServer()
        return
    crypten.init()

    from privinfer.model.ir import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, Poly, ReLU, load_graph
    graph = load_graph(graph_blob)
    enc = lambda a: crypten.cryptensor(torch.from_numpy(a) if rank == 0 else torch.zeros(a.shape), src=0)  # noqa: E731
    W = [(enc(l.weight), enc(l.bias.reshape(1, -1, 1, 1))) if isinstance(l, Conv2d) else
         (enc(np.ascontiguousarray(l.weight.T)), enc(l.bias.reshape(1, -1))) if isinstance(l, Linear) else None
         for l in graph.layers]

    def forward(h):
        for l, w in zip(graph.layers, W):
            if isinstance(l, Conv2d):
                t, b, lf, r = l.padding
                h = (h.conv2d(w[0], stride=l.stride, padding=(t, lf)) if (t, lf) == (b, r)
                     else h.pad((lf, r, t, b)).conv2d(w[0], stride=l.stride)) + w[1]
            elif isinstance(l, Linear):
                h = h.matmul(w[0]) + w[1]
            elif isinstance(l, ReLU):
                h = h.relu()
            elif isinstance(l, MaxPool2d):
                h = h.max_pool2d(l.kernel, stride=l.stride)
            elif isinstance(l, AvgPool2d):
                h = h.avg_pool2d(l.kernel, stride=l.stride, padding=l.padding)
            elif isinstance(l, Poly):
                out = h * 0 + l.coeffs[-1]
                for c in reversed(l.coeffs[:-1]):
                    out = out * h + c
                h = out
            elif isinstance(l, Flatten):
                h = h.flatten(1)
        return h

    comm = crypten.comm.get()
    times, stats = [], []
    for i in range(n + 1):  # the first query warms up
        x = torch.from_numpy(X[i % len(X)][None]) if rank == 1 else torch.zeros((1, *graph.input_shape))
        comm.reset_communication_stats()
        t0 = time.perf_counter()
        out = forward(crypten.cryptensor(x, src=1)).get_plain_text(dst=1)
        dt = time.perf_counter() - t0
        if i:
            times.append(dt)
            stats.append(dict(comm.get_communication_stats()))
        if rank == 1 and i:
            stats[-1]["argmax"] = int(out.argmax())
    q.put((rank, times, stats))
    crypten.uninit()


def run_baseline(graph, X: np.ndarray, n: int) -> dict:
    import multiprocessing as mp

    from privinfer.model.ir import graph_to_bytes
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    blob = graph_to_bytes(graph)
    procs = [ctx.Process(target=_baseline_party, args=(r, port, blob, X[:n], n, q), daemon=True) for r in range(3)]
    for p in procs:
        p.start()
    res = {}
    for _ in range(2):
        rank, times, stats = q.get(timeout=1800)
        res[rank] = (times, stats)
    for p in procs:
        p.join(60)
        if p.is_alive():
            p.kill()
    lat = [max(a, b) for a, b in zip(res[0][0], res[1][0])]
    s0, s1 = res[0][1][-1], res[1][1][-1]
    return {"latency_s": _dist(lat), "bytes_rank0": s0["bytes"], "bytes_rank1": s1["bytes"],
            "rounds_rank0": s0["rounds"], "rounds_rank1": s1["rounds"],
            "comm_time_rank0_s": s0["time"]}


def _dist(v):
    v = sorted(v)
    if not v:
        return {}
    return {"median": statistics.median(v), "p25": float(np.percentile(v, 25)), "p75": float(np.percentile(v, 75)),
            "min": v[0], "n": len(v)}


# --- ss -------------------------------------------------------------------------------------------
def run_ss(graph, X: np.ndarray, y: np.ndarray, n: int, acc_n: int, acc_batch: int, options: dict) -> dict:
    from privinfer import PrivateSession, run_reference
    t0 = time.perf_counter()
    sess = PrivateSession(graph, "ss", **options)
    setup_s = time.perf_counter() - t0
    try:
        sess.infer(X[0])  # warm-up
        recs, lat = [], []
        for i in range(n):
            sess.infer(X[i % len(X)])
            q = sess.stats.last
            lat.append(q.latency_s)
            last = sess.client.last  # the session's per-query totals include the gloo traffic: take it out
            recs.append({**last, "channel_up": q.bytes_client_to_server - last["side_bytes_client_to_server"],
                         "channel_down": q.bytes_server_to_client - last["side_bytes_server_to_client"],
                         "channel_rounds": q.rounds - last["side_rounds"]})
        acc = {}
        if acc_n:
            Xa, ya = X[:acc_n], y[:acc_n]
            outs = [sess.infer(Xa[i:i + acc_batch]) for i in range(0, len(Xa), acc_batch)]
            priv = np.concatenate(outs)
            ref = run_reference(graph, Xa)
            acc = {"samples": len(ya), "argmax_agreement": float(np.mean(priv.argmax(1) == ref.argmax(1))),
                   "accuracy_plain": float(np.mean(ref.argmax(1) == ya)),
                   "accuracy_private": float(np.mean(priv.argmax(1) == ya)),
                   "max_abs_err": float(np.abs(priv - ref).max()),
                   "batch_online_s_per_image": sess.client.last["online_s"] / max(1, len(Xa[-acc_batch:])),
                   }
        privacy = sess.stats.privacy
        setup_bytes = sess.stats.setup_bytes
    finally:
        sess.close()
    med = lambda k: statistics.median(r[k] for r in recs)  # noqa: E731
    last = recs[-1]
    online_bytes = last["online_bytes_client_to_server"] + last["online_bytes_server_to_client"]
    dealer_bytes = last["offline_bytes_server_to_dealer"] + last["offline_bytes_dealer_to_server"]
    channel_bytes = last["channel_up"] + last["channel_down"]
    return {"setup_s": setup_s, "setup_bytes": setup_bytes, "latency_s": _dist(lat),
            "offline_s": med("offline_s"), "online_s": med("online_s"),
            "total_s": statistics.median(r["offline_s"] + r["online_s"] for r in recs),
            "online_s_dist": _dist([r["online_s"] for r in recs]),
            "bytes_online_client_to_server": last["online_bytes_client_to_server"],
            "bytes_online_server_to_client": last["online_bytes_server_to_client"],
            "bytes_dealer": dealer_bytes, "bytes_channel": channel_bytes,
            "bytes_channel_up": last["channel_up"], "bytes_channel_down": last["channel_down"],
            "cpu_s_client": med("online_cpu_s_client"), "cpu_s_server": med("online_cpu_s_server"),
            "bytes_total": online_bytes + dealer_bytes + channel_bytes,
            "rounds_online": last["online_rounds"], "online_dealer_messages": last["online_dealer_messages"],
            "offline_dealer_messages": last["offline_dealer_messages"], "tuples": last["tuples"],
            "channel_rounds": last["channel_rounds"], "privacy": privacy, **acc}


# --- main -----------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", action="append", help="zoo network (repeatable); default minionn-mnist")
    ap.add_argument("--samples", type=int, default=20, help="single-image queries timed (after one warm-up)")
    ap.add_argument("--accuracy", type=int, default=450, help="test images for argmax agreement (0: skip)")
    ap.add_argument("--acc-batch", type=int, default=50)
    ap.add_argument("--baseline", choices=("auto", "yes", "no"), default="auto",
                    help="plain-CrypTen baseline (auto: for minionn-mnist only)")
    ap.add_argument("--baseline-samples", type=int, default=10)
    ap.add_argument("--precision-bits", type=int, default=16)
    ap.add_argument("--json", help="append one JSON record per model to this file")
    a = ap.parse_args(argv)
    models = a.model or ["minionn-mnist"]
    for name in models:
        graph, X, y, note = load(name)
        print(f"== {name} ({note}); input {graph.input_shape}, {len(graph.layers)} layers", flush=True)
        base = None
        if a.baseline == "yes" or (a.baseline == "auto" and name == "minionn-mnist"):
            base = run_baseline(graph, X, a.baseline_samples)
            print(f"baseline (stock CrypTen, TTP on demand): median {base['latency_s']['median']:.3f} s, "
                  f"rank0 {base['bytes_rank0'] / 1e6:.2f} MB / {base['rounds_rank0']} rounds, "
                  f"rank1 {base['bytes_rank1'] / 1e6:.2f} MB / {base['rounds_rank1']} rounds", flush=True)
        r = run_ss(graph, X, y, a.samples, a.accuracy, a.acc_batch, {"precision_bits": a.precision_bits})
        print(f"ss: setup {r['setup_s']:.2f} s; latency median {r['latency_s']['median']:.3f} s "
              f"(p25 {r['latency_s']['p25']:.3f}, p75 {r['latency_s']['p75']:.3f}); "
              f"offline {r['offline_s']:.3f} s, online {r['online_s']:.3f} s, total {r['total_s']:.3f} s")
        print(f"    bytes: online c->s {r['bytes_online_client_to_server'] / 1e6:.2f} MB, "
              f"s->c {r['bytes_online_server_to_client'] / 1e6:.2f} MB; dealer {r['bytes_dealer'] / 1e6:.2f} MB "
              f"(offline, {r['offline_dealer_messages']} msgs); channel {r['bytes_channel'] / 1e3:.1f} kB; "
              f"total {r['bytes_total'] / 1e6:.2f} MB; online rounds {r['rounds_online']}, "
              f"online dealer messages {r['online_dealer_messages']}, tuples {r['tuples']}")
        if "argmax_agreement" in r:
            print(f"    accuracy on {r['samples']} test images: plain {r['accuracy_plain']:.4f}, private "
                  f"{r['accuracy_private']:.4f}, argmax agreement {r['argmax_agreement']:.4f}, "
                  f"max_abs_err {r['max_abs_err']:.2e}")
        if base:
            b = base["latency_s"]["median"]
            print(f"    vs baseline: online {r['online_s'] / b:.3f}x (target <= 0.25), total "
                  f"{r['total_s'] / b:.3f}x (target <= 0.6); bytes {r['bytes_total'] / base['bytes_rank0']:.3f}x "
                  f"of rank0's count (target <= 20 MB: {r['bytes_total'] / 1e6:.2f} MB)", flush=True)
        if a.json:
            rec = {"protocol": "ss", "model": name, "batch": 1, "network": "loopback", "samples": a.samples,
                   "weights": note, "latency_s": r["latency_s"], "offline_s": r["offline_s"],
                   "online_s": r["online_s"],
                   "bytes_client_to_server": r["bytes_online_client_to_server"] + r["bytes_channel_up"],
                   "bytes_server_to_client": r["bytes_online_server_to_client"] + r["bytes_channel_down"],
                   "bytes_dealer": r["bytes_dealer"], "setup_bytes": r["setup_bytes"], "rounds": r["rounds_online"],
                   "accuracy_plain": r.get("accuracy_plain"), "accuracy_private": r.get("accuracy_private"),
                   "argmax_agreement": r.get("argmax_agreement"), "max_abs_err": r.get("max_abs_err"),
                   "privacy": r["privacy"], "baseline": base}
            with open(a.json, "a") as f:
                f.write(json.dumps(rec) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
