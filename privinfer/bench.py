"""Benchmark harness: one record per protocol × model × batch × network, with the fields of ARCHITECTURE.md.

Every latency comes with bytes both ways, rounds and accuracy. Latencies are medians (with p25/p75)
over `samples` queries on the digits test split, measured client-side over a real TCP channel to a
server in its own process.
"""
from __future__ import annotations

import json
import resource
import tempfile
from contextlib import contextmanager
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from .errors import PrivinferError
from .model.ir import Graph, save_graph
from .model.reference import run_reference
from .netem import get_profile, server_in_namespace
from .protocols.base import get_protocol, resolve_protocol, split_options
from .session import PrivateSession, connect

RECORD_FIELDS = ("protocol", "model", "batch", "network", "samples", "latency_s", "setup_s", "offline_s", "online_s",
                 "bytes_client_to_server", "bytes_server_to_client", "bytes_dealer", "setup_bytes", "rounds",
                 "accuracy_plain", "accuracy_private", "argmax_agreement", "max_abs_err", "peak_rss_mb", "privacy")


def _quantiles(values: list[float]) -> dict:
    q = np.percentile(values, [25, 50, 75])
    return {"median": float(q[1]), "p25": float(q[0]), "p75": float(q[2])}


def _peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return round(max(own, kids) / 1024.0, 1)  # Linux reports KiB


def load_model_and_data(model: str | Graph, split: str = "test"):
    """(graph, X, y, name) for a zoo name or a privinfer .npz file evaluated on the digits test split."""
    from . import zoo
    if isinstance(model, Graph):
        graph, name = model, "custom"
    elif str(model).endswith(".npz"):
        from .model.ir import load_graph
        graph, name = load_graph(model), Path(model).stem
    else:
        graph, name = zoo.load_model(model), str(model)
    X, y = zoo.load_dataset(name if name in zoo.NETWORKS else "minionn-mnist", split)
    if X.shape[1:] != tuple(graph.input_shape):
        raise PrivinferError(f"model input {graph.input_shape} does not match the data set's {X.shape[1:]}")
    return graph, X, y, name


def run_bench(protocol: str, model: str | Graph, *, batch: int = 1, samples: int = 10, warmup: int = 1,
              network: str = "loopback", options: dict | None = None, graph: Graph | None = None,
              progress: bool = True) -> dict[str, Any]:
    """Measure one configuration and return one record."""
    profile = get_profile(network)
    if protocol == "he" and (options or {}).get("packing") == "batch" and "batch_size" not in options:
        options = {**options, "batch_size": int(batch)}  # parameters for the batch measured (a full slot group
        # needs no output mask: N=8192 for 4096 images, where a batch_size of 1 would get N=16384)
    base_graph, X, y, name = load_model_and_data(model)
    base_y = y
    graph = graph or base_graph
    need = (samples + warmup) * batch
    if need > len(X):  # large batches (HE batch packing) reuse the test images cyclically
        if progress:
            print(f"  note: {need} images needed, the test split holds {len(X)}: repeating it cyclically")
        reps = -(-need // len(X))
        X, y = np.concatenate([X] * reps)[:need], np.concatenate([y] * reps)[:need]
    ref_all = run_reference(graph, X)
    n_split = min(len(X), len(base_y))
    # the plaintext accuracy is the original model's (a served graph may be re-trained, e.g. noisy's)
    base_ref = ref_all if graph is base_graph else run_reference(base_graph, X[:n_split])
    accuracy_plain = float(np.mean(base_ref[:n_split].argmax(1) == base_y[:n_split]))
    lat, off, on, up, down, dealer, rounds, logits = [], [], [], [], [], [], [], []
    with _open_session(graph, protocol, options or {}, profile) as sess:
        for i in range(samples + warmup):
            xb = X[i * batch:(i + 1) * batch]
            out = sess.infer(xb)
            q = sess.stats.last
            if i < warmup:
                continue
            logits.append(out)
            lat.append(q.latency_s)
            off.append(q.offline_s)
            on.append(q.online_s)
            up.append(q.bytes_client_to_server)
            down.append(q.bytes_server_to_client)
            dealer.append(q.bytes_dealer)
            rounds.append(q.rounds)
            if progress:
                print(f"\r  {protocol}/{name} query {i + 1 - warmup}/{samples}: {q.latency_s:.3f} s", end="", flush=True)
        stats = sess.stats
        setup_timing = dict(getattr(sess.client, "setup_timing", None) or {})
    if progress:
        print()
    logits = np.concatenate(logits)
    idx = slice(warmup * batch, (samples + warmup) * batch)
    ref, labels = ref_all[idx], y[idx]
    return {
        "protocol": protocol, "model": name, "batch": batch, "network": network, "samples": samples,
        "latency_s": _quantiles(lat),
        "setup_s": round(stats.setup_s, 6),  # once per session: keys, processes, weight sharing
        "offline_s": round(statistics.median(off), 6),  # per query, before the input is used
        "online_s": round(statistics.median(on), 6),
        "bytes_client_to_server": int(statistics.median(up)),
        "bytes_server_to_client": int(statistics.median(down)),
        "bytes_dealer": int(statistics.median(dealer)),
        "setup_bytes": int(stats.setup_bytes),
        "rounds": int(statistics.median(rounds)),
        "accuracy_plain": round(accuracy_plain, 4),
        "accuracy_private": round(float(np.mean(logits.argmax(1) == labels)), 4),
        "argmax_agreement": round(float(np.mean(logits.argmax(1) == ref.argmax(1))), 4),
        "max_abs_err": float(np.max(np.abs(logits - ref))),
        "peak_rss_mb": _peak_rss_mb(),
        "privacy": stats.privacy,
        **({"plan": stats.privacy["layer_protocols"]} if "layer_protocols" in stats.privacy else {}),
        **({"setup_timing": setup_timing} if setup_timing else {}),
    }


@contextmanager
def _open_session(graph: Graph, protocol: str, options: dict, profile):
    """Loopback: PrivateSession (server in its own process). Otherwise: server in a shaped namespace."""
    if profile.name == "loopback":
        with PrivateSession(graph, protocol, **options) as sess:
            yield sess
        return
    protocol, options = resolve_protocol(protocol, options)
    cls = get_protocol(protocol)
    server_opts, client_opts = split_options(cls, options)
    server_opts = {**cls.local_session_defaults, **server_opts}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.npz")
        save_graph(graph, path)
        with server_in_namespace(path, protocol, server_opts, profile) as (host, port):
            with connect(host, port, protocol, timeout=600.0, **client_opts) as sess:
                yield sess


def format_table(records: list[dict]) -> str:
    """A Markdown table (the README's benchmark table uses this format)."""
    head = ("| protocol | model | network | batch | latency median (p25–p75) | setup time | offline | online | up | down | dealer | setup bytes | rounds "
            "| acc plain | acc private | agree | max err | RSS | guarantee |")
    rows = [head, "|" + "---|" * 19]
    for r in records:
        lat = r["latency_s"]
        rows.append(
            f"| {_label(r)} | {r['model']} | {r['network']} | {r['batch']} | {_secs(lat['median'])} "
            f"({_secs(lat['p25'])}–{_secs(lat['p75'])}) | {_secs(r['setup_s'])} | {_secs(r['offline_s'])} "
            f"| {_secs(r['online_s'])} | {_size(r['bytes_client_to_server'])} "
            f"| {_size(r['bytes_server_to_client'])} | {_size(r['bytes_dealer'])} | {_size(r['setup_bytes'])} "
            f"| {r['rounds']} "
            f"| {r['accuracy_plain']:.3f} | {r['accuracy_private']:.3f} | {r['argmax_agreement']:.3f} "
            f"| {r['max_abs_err']:.1e} | {r['peak_rss_mb']:.0f} MB | {(r.get('privacy') or {}).get('guarantee', '—')} |")
    return "\n".join(rows)


def _label(r: dict) -> str:
    eps = (r.get("privacy") or {}).get("epsilon_per_query")
    packing = (r.get("privacy") or {}).get("packing")
    mode = (r.get("privacy") or {}).get("circuit_privacy")
    packing = ", ".join(p for p in (packing, mode) if p)
    dealer = {"cryptographic-server-dealer": "server's dealer", "cryptographic-trusted-dealer": "third-party dealer"}.get(
        (r.get("privacy") or {}).get("guarantee"))
    return (r["protocol"] + (f" ε={eps}" if eps is not None else "") + (f" ({packing})" if packing else "")
            + (f" ({dealer})" if dealer else ""))


def _secs(t: float) -> str:
    return f"{t:.2f} s" if t >= 1 else f"{t * 1e3:.1f} ms" if t >= 1e-3 else f"{t * 1e6:.0f} µs"


def _size(n: int) -> str:
    for unit, k in (("GB", 1 << 30), ("MB", 1 << 20), ("KB", 1 << 10)):
        if n >= k:
            return f"{n / k:.1f} {unit}"
    return f"{n} B"


def write_records(records: list[dict], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for r in records:
        missing = set(RECORD_FIELDS) - set(r)
        if missing:
            raise PrivinferError(f"benchmark record lacks {sorted(missing)}")
    path.write_text(json.dumps(records, indent=2) + "\n")
