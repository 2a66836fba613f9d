"""The matrix's Markdown report: the records table, the network model's error, peers, published figures.

Why: one file a reader can diff between runs, produced from the same JSON the README generator reads.
"""
from __future__ import annotations

import platform

from ..bench import _secs, _size, format_table
from .netmodel import SHAPED, error_rows


def machine() -> dict:
    """Cores and CPU model of this machine (from /proc/cpuinfo where there is one)."""
    import os
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cores": cores, "cpu": model, "python": platform.python_version(), "system": platform.system()}


def models_table(records: list[dict]) -> str:
    rows = ["| protocol | model | " + " | ".join(f"{p} modelled" for p in SHAPED) + " |",
            "|" + "---|" * (2 + len(SHAPED))]
    for r in records:
        if r["network"] != "loopback" or "modelled_latency_s" not in r:
            continue
        rows.append(f"| {r['label']}{_eps_cell(r)} | {r['model']} | "
                    + " | ".join(_secs(r["modelled_latency_s"][p]) for p in SHAPED) + " |")
    return "\n".join(rows)


def error_table(records: list[dict]) -> str:
    rows = error_rows(records)
    if not rows:
        return "_No shaped measurement in this run: lan/wan/mobile figures are modelled only._"
    out = ["| protocol | model | profile | modelled | measured (tc tbf, RTT on every link) | model error | RTT missing on |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['label']} | {r['model']} | {r['profile']} | {_secs(r['modelled_s'])} | "
                   f"{_secs(r['measured_s'])} | {100 * r['error']:+.0f} % | {', '.join(r['rtt_missing_links']) or '—'} |")
    return "\n".join(out)


def peers_table(peers: list[dict]) -> str:
    if not peers:
        return "_Peers not run._"
    out = ["| peer (measured in this run) | network | peer latency | privinfer row | privinfer latency | privinfer / peer | note |",
           "|---|---|---|---|---|---|---|"]
    for p in peers:
        if "error" in p:
            out.append(f"| {p['peer']} | — | not measured: {p['error'][:120]} | | | | |")
            continue
        ratio = f"{p['ratio']:.2f}×" if p.get("ratio") else "—"
        ours = _secs(p["privinfer_latency_s"]) if p.get("privinfer_latency_s") else "— (row not in this run)"
        out.append(f"| {p['peer']} | {p['model']} | {_secs(p['peer_latency_s'])} | {p['privinfer']} | {ours} "
                   f"| {ratio} | {p['note']} |")
    return "\n".join(out)


def published_table(rows: list[dict]) -> str:
    if not rows:
        return "_No benchmarks/published.json in this checkout._"
    out = ["| system | network | protocol | metric | value | hardware | source | checked | |", "|" + "---|" * 9]
    for r in rows:
        out.append(f"| {r['system']} | {r['network']} | {r['protocol']} | {r['metric']} | {r['value']} {r['unit']} "
                   f"| {r['hardware']} | {r['source']} | {'yes' if r['checked'] else '(?)'} | published, other hardware |")
    return "\n".join(out)


def summary_table(records: list[dict]) -> str:
    """The headline table: one row per loopback record, fewer columns than `format_table`."""
    out = ["| protocol | network | latency (median) | up + down + dealer | rounds | acc. private / plain (same images) "
           "| CPU s client / server / dealer | peak MB client / server / dealer |", "|" + "---|" * 8]
    for r in records:
        if r["network"] != "loopback":
            continue
        cpu, rss = r["cpu_s"], r["peak_rss_mb"]
        out.append(f"| {r['label']}{_eps_cell(r)} | {r['model']} | {_secs(r['latency_s']['median'])} | "
                   f"{_size(r['bytes_client_to_server'] + r['bytes_server_to_client'] + r['bytes_dealer'])} | "
                   f"{r['rounds']} | {r['accuracy_private']:.2f} / {r['accuracy_plain']:.2f} "
                   f"({r['samples'] * r['batch']}) | {_triple(cpu, '.1f')} | {_triple(rss, '.0f')} |")
    return "\n".join(out)


def _triple(d: dict, fmt: str) -> str:
    return " / ".join("—" if d.get(p) is None else format(d[p], fmt) for p in ("client", "server", "dealer"))


def _eps_cell(r: dict) -> str:
    eps = (r.get("privacy") or {}).get("epsilon_per_query")
    return f" ε={eps}" if eps is not None else ""


def markdown(suite: dict, records: list[dict]) -> str:
    m = suite["machine"]
    parts = [f"# privinfer benchmark matrix ({suite['matrix']})", "",
             f"Command: `{suite['command']}`  ", f"Machine: {m['cores']} cores, {m['cpu']}; wall time "
             f"{suite['wall_s']:.0f} s. Every record measured on loopback; {suite['network_note']}", "",
             "## Summary", "", summary_table(records), "",
             "## Network profiles (modelled: loopback + rounds × RTT + bytes / rate)", "", models_table(records), "",
             "## Model error against tc-shaped measurements", "", error_table(records), "",
             "## Peers, same run", "", peers_table(suite.get("peers", [])), "",
             "## Published figures (other hardware)", "", published_table(suite.get("published", [])), "",
             "## All fields", "", format_table(records), ""]
    if suite.get("skipped"):
        parts += ["## Not run", ""] + [f"- {s['case']}: {s['reason']}" for s in suite["skipped"]] + [""]
    if suite.get("failed"):
        parts += ["## Failed", ""] + [f"- {f['case']}: {f['error']}" for f in suite["failed"]] + [""]
    return "\n".join(parts)
