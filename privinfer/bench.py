"""Benchmark harness: one record per protocol × model × batch × network, with the fields of ARCHITECTURE.md.

Every latency comes with bytes both ways, rounds and accuracy. Latencies are medians (with p25/p75)
over `samples` queries on the digits test split, measured client-side over a real TCP channel to a
server in its own process.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from ._resources import PartySampler
from .affinity import pin_parties
from .errors import PrivinferError
from .model.ir import Graph, save_graph
from .model.reference import run_reference
from . import netem
from .netem import get_profile, server_in_namespace
from .protocols.base import get_protocol, resolve_protocol, split_options
from .session import PrivateSession, connect

RECORD_FIELDS = ("protocol", "model", "batch", "network", "samples", "latency_s", "setup_s", "offline_s", "online_s",
                 "bytes_client_to_server", "bytes_server_to_client", "bytes_dealer", "setup_bytes", "rounds",
                 "accuracy_plain", "accuracy_plain_full", "accuracy_private", "argmax_agreement", "max_abs_err",
                 "full_split_images", "peak_rss_mb", "cpu_s", "rtt_emulated_links", "rtt_missing_links", "network_profile",
                 "privacy", "options")


def _recorded_options(options: dict | None) -> dict:
    """The server and client options a record was measured with (e.g. `prefetch`, `plan`, `circuit_privacy`), so
    that two records can be told apart; secrets are never written, other values as JSON allows."""
    out = {}
    for k, v in (options or {}).items():
        if "secret" in k:
            out[k] = "<redacted>" if v is not None else None
        elif isinstance(v, (str, int, float, bool, type(None))):
            out[k] = v
        else:
            out[k] = repr(v)
    return out


def _quantiles(values: list[float]) -> dict:
    q = np.percentile(values, [25, 50, 75])
    return {"median": float(q[1]), "p25": float(q[0]), "p75": float(q[2])}


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
              progress: bool = True, pin: bool | None = None) -> dict[str, Any]:
    """Measure one configuration and return one record. `pin`: the 2PC parties (if any) each on its own core
    (`affinity.py`; None: as `PRIVINFER_PIN_PARTIES` says, off by default: what a user's session gets)."""
    if pin is None:
        from .affinity import enabled
        pin = enabled()
    profile = get_profile(network)
    if protocol == "he" and (options or {}).get("packing") == "batch" and "batch_size" not in options:
        options = {**options, "batch_size": int(batch)}  # parameters for the batch measured (a full slot group
        # needs no output mask: N=8192 for 4096 images, where a batch_size of 1 would get N=16384)
    base_graph, X, y, name = load_model_and_data(model)
    base_y = y
    graph = graph or base_graph
    auto = None
    if protocol == "auto":  # the planner's choice for the network measured; the record carries its prediction
        from .planner.auto import resolve_auto
        protocol, options, auto = resolve_auto(graph, options or {}, network=network)
        if progress:
            print(auto.explain())
    need = (samples + warmup) * batch
    if need > len(X):  # large batches (HE batch packing) reuse the test images cyclically
        if progress:
            print(f"  note: {need} images needed, the test split holds {len(X)}: repeating it cyclically")
        reps = -(-need // len(X))
        X, y = np.concatenate([X] * reps)[:need], np.concatenate([y] * reps)[:need]
    ref_all = run_reference(graph, X)
    n_split = len(base_y)
    # the plaintext accuracy is the original model's (a served graph may be re-trained, e.g. noisy's)
    base_ref = ref_all if graph is base_graph else run_reference(base_graph, X)
    accuracy_plain_full = float(np.mean(run_reference(base_graph, X[:n_split]).argmax(1) == base_y)
                                if len(X) > n_split else np.mean(base_ref[:n_split].argmax(1) == base_y))
    lat, off, on, up, down, dealer, rounds, logits = [], [], [], [], [], [], [], []
    load = {}
    if auto:  # the planner's timings and this measurement, each with the machine's load (calibrate.machine_load)
        from .planner.calibrate import machine_load
        load["start"] = machine_load()
    link: dict = {}  # an emulated link's measured round trip (netem.link_rtt_ms)
    with PartySampler() as sampler, _open_session(graph, protocol, options or {}, profile, sampler, link) as sess:
        cores = pin_parties([os.getpid()]) if pin else {}  # every party is this process's descendant
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
        sampler.sample()  # the parties' last reading before the session closes
    if auto:
        load["end"] = machine_load()
    if progress:
        print()
    logits = np.concatenate(logits)
    idx = slice(warmup * batch, (samples + warmup) * batch)
    ref, labels, plain = ref_all[idx], y[idx], base_ref[idx]
    parties = sampler.result()
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
        # both on exactly the queried images; the full split's figure is kept apart
        "accuracy_plain": round(float(np.mean(plain.argmax(1) == labels)), 4),
        "accuracy_plain_full": round(accuracy_plain_full, 4),
        "full_split_images": int(n_split),
        "accuracy_private": round(float(np.mean(logits.argmax(1) == labels)), 4),
        "argmax_agreement": round(float(np.mean(logits.argmax(1) == ref.argmax(1))), 4),
        "max_abs_err": float(np.max(np.abs(logits - ref))),
        # per party, process trees included (privinfer._resources; sampled every 0.1 s, None: no such party)
        # the client is this process: `client_at_start` is its memory before the session (earlier cases' heap)
        "peak_rss_mb": {**{p: (v or {}).get("peak_rss_mb") for p, v in parties.items()},
                        "client_at_start": (parties["client"] or {}).get("at_start_mb")},
        "cpu_s": {p: (v or {}).get("cpu_s") for p, v in parties.items()},
        # netem delays the link itself (privinfer/netem_relay.py): every socket between the sides pays the RTT
        "rtt_emulated_links": (["client <-> server channel", *_inner_links(protocol, options or {})]
                               if profile.rtt_ms else []),
        "rtt_missing_links": [],
        # the profile as measured (profiles may be retuned later; plots of old records use these numbers)
        "network_profile": {"rate_mbit": profile.rate_mbit, "rtt_ms": profile.rtt_ms},
        "privacy": stats.privacy,
        "options": _recorded_options(options),
        **({"plan": stats.privacy["layer_protocols"]} if "layer_protocols" in stats.privacy else {}),
        **({"link_rtt_ms_measured": {k: round(v, 3) for k, v in link.items()}} if link else {}),
        **({"auto": True, "plan": auto.layer_protocols, "plan_string": auto.plan_string,
            # the prediction for the link as measured (its round trip from `link_rtt_ms`), and for the nominal one
            "predicted_latency_s": round(auto.predicted_latency_s(link_as_measured(auto.network, link)), 6),
            "predicted_latency_nominal_s": round(auto.predicted_latency_s(), 6),
            "best_single_protocol_predicted_s": auto.single, "calibration": auto.calibration,
            "load": load} if auto else {}),
        **({"setup_timing": setup_timing} if setup_timing else {}),
        # 2PC sessions: {party process: core} when pinned (affinity.py), {} when placed by the scheduler
        **({"party_cores": cores} if cores or protocol in ("ss", "hybrid") else {}),
    }


def link_as_measured(nominal, link: dict):
    """The planner's profile of the link as emulated: its nominal rate, and the round trip measured on it by the
    raw TCP ping-pong (`netem.link_rtt_ms`).

    Why TCP's and not gloo's ping-pong (recorded too): gloo's is timed between two fresh processes, and where the
    scheduler puts those moves it more than the link does (session 9, idle, `lan`: gloo 0.83, 0.88 and 1.15 ms in
    one validation run where TCP gave 0.68-0.73; two fresh local gloo processes ping-pong in 0.1 or 3.3 ms
    depending on whether they share a core). The parties' own rounds pay the link's round trip plus their
    loopback exchange floor, which the loopback-measured compute already holds.
    Why not a rate measured too: timed with 256 KB gloo ping-pongs (session 9, run 9a), `lan` delivered 3.6-8.4 ns
    per byte beyond loopback (its nominal 8), and `wan` 143-163 (nominal 80: a fresh connection's receive
    window, not what the parties' warmed-up links see; `ss` on cryptonets-mnist measured 1-3 % above the
    nominal rate's prediction): the nominal rate is the better figure on both."""
    from .planner.cost import NetworkProfile
    if not link:
        return nominal
    rtt = link.get("tcp", link.get("gloo", nominal.rtt_ms))
    return NetworkProfile(f"{nominal.name} (measured RTT {rtt:.2f} ms)", nominal.rate_mbit, rtt)


def _inner_links(protocol: str, options: dict) -> tuple[str, ...]:
    name = resolve_protocol(protocol, options)[0]
    return tuple(getattr(get_protocol(name), "inner_links", ()))


@contextmanager
def _open_session(graph: Graph, protocol: str, options: dict, profile, sampler: PartySampler | None = None,
                  link: dict | None = None):
    """Loopback: PrivateSession (server in its own process). Otherwise: server in a shaped namespace."""
    if profile.name == "loopback":
        with PrivateSession(graph, protocol, **options) as sess:
            if sampler is not None and sess._proc is not None:
                sampler.add("server", sess._proc.pid)
            yield sess
        return
    protocol, options = resolve_protocol(protocol, options)
    cls = get_protocol(protocol)
    server_opts, client_opts = split_options(cls, options)
    server_opts = {**cls.local_session_defaults, **server_opts}
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "model.npz")
        save_graph(graph, path)
        on_start = (lambda pid: sampler.add("server", pid)) if sampler is not None else None
        on_link = None
        if link is not None:  # the link's round trips as delivered (TCP's prices it; gloo's is recorded too)
            gloo = protocol in ("ss", "hybrid")
            on_link = lambda ns, ip: link.update(netem.link_rtt_ms(ns, ip, 7701, gloo=gloo))  # noqa: E731
        with server_in_namespace(path, protocol, server_opts, profile, on_start=on_start, on_link=on_link) as (host, port):
            with connect(host, port, protocol, timeout=600.0, **client_opts) as sess:
                yield sess


def format_table(records: list[dict]) -> str:
    """A Markdown table (the README's benchmark table uses this format).

    Accuracy columns: plaintext and private accuracy on the same queried images, then the plaintext model
    on the whole test split. Records written before the two were separated hold only the full-split
    figure (in `accuracy_plain`): their same-image cell is "—".
    """
    head = ("| protocol | model | network | batch | latency median (p25–p75) | setup time | offline | online | up | down "
            "| dealer | setup bytes | rounds | acc plain (same images) | acc private | acc plain (full split) | agree "
            "| max err | peak RSS client / server / dealer | guarantee |")
    rows = [head, "|" + "---|" * 20]
    for r in records:
        lat = r["latency_s"]
        full = r.get("accuracy_plain_full", r["accuracy_plain"])
        same = f"{r['accuracy_plain']:.3f}" if "accuracy_plain_full" in r else "—"
        rows.append(
            f"| {_label(r)} | {r['model']} | {r['network']} | {r['batch']} | {_secs(lat['median'])} "
            f"({_secs(lat['p25'])}–{_secs(lat['p75'])}) | {_secs(r['setup_s'])} | {_secs(r['offline_s'])} "
            f"| {_secs(r['online_s'])} | {_size(r['bytes_client_to_server'])} "
            f"| {_size(r['bytes_server_to_client'])} | {_size(r['bytes_dealer'])} | {_size(r['setup_bytes'])} "
            f"| {r['rounds']} | {same} | {r['accuracy_private']:.3f} | {full:.3f} | {r['argmax_agreement']:.3f} "
            f"| {r['max_abs_err']:.1e} | {format_rss(r['peak_rss_mb'])} | {(r.get('privacy') or {}).get('guarantee', '—')} |")
    return "\n".join(rows)


def format_rss(rss) -> str:
    """Per-party peak RSS ("client / server / dealer"); an old record has one figure: its largest process."""
    if isinstance(rss, dict):
        return " / ".join("—" if rss.get(p) is None else f"{rss[p]:.0f}" for p in ("client", "server", "dealer")) + " MB"
    return f"{rss:.0f} MB (largest process)"


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
