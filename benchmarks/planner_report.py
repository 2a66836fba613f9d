"""Predicted against measured latency for `privinfer bench --protocol auto` records, and the comparison of the
chosen plan with single-protocol runs measured on the same (model, network).

    python benchmarks/planner_report.py benchmarks/results/planner/*.json > benchmarks/results/planner/report.md

Why a script: the planner's accuracy target (|predicted - measured| / measured <= 25 %) and its plan-quality
target (never > 5 % slower than the best single protocol, >= 1.3x faster on some pair) are read off bench
records; this prints both tables from whatever records exist, with the commands that made them.
"""
from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> None:
    recs = [r for p in paths for r in json.loads(open(p).read())]
    auto = [r for r in recs if r.get("auto")]
    print("| model | network | chosen plan | predicted (link as measured; nominal) | measured (median, p25-p75) | error "
          "| link RTT measured | load avg | 2PC parties |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in auto:
        m, lat = r["predicted_latency_s"], r["latency_s"]
        err = (m - lat["median"]) / lat["median"]
        nominal = r.get("predicted_latency_nominal_s", m)
        rtt = r.get("link_rtt_ms_measured")
        print(f"| {r['model']} | {r['network']} | {r['protocol']} `{r['plan_string']}` | {m:.3f} s; {nominal:.3f} s | "
              f"{lat['median']:.3f} s ({lat['p25']:.3f}-{lat['p75']:.3f}) | {err:+.0%} | "
              f"{_rtt(rtt)} | {_load(r)} | {_pinned(r)} |")
    print()
    print("| model | network | auto (measured) | single protocol (measured) | ratio single / auto |")
    print("|---|---|---|---|---|")
    for r in auto:
        for s in recs:
            if s.get("auto") or (s["model"], s["network"]) != (r["model"], r["network"]):
                continue
            ratio = s["latency_s"]["median"] / r["latency_s"]["median"]
            print(f"| {r['model']} | {r['network']} | {r['latency_s']['median']:.3f} s ({r['protocol']}) | "
                  f"{s['latency_s']['median']:.3f} s ({s['protocol']}) | {ratio:.2f}x |")


def _rtt(link: dict | None) -> str:
    """The emulated link's measured round trips (records since session 6): gloo's (2PC parties) and raw TCP's."""
    if not link:
        return "—"
    if isinstance(link, (int, float)):  # the first records of session 6 kept raw TCP's only
        return f"tcp {link:.2f} ms"
    rtt = " / ".join(f"{k} {v:.2f} ms" for k, v in sorted(link.items()) if k in ("gloo", "tcp"))
    # session 9a's records also carry the per-byte cost of large gloo messages (not used for pricing: bench.py)
    return rtt + (f"; {link['link_ns_per_byte']:.1f} ns/byte" if "link_ns_per_byte" in link else "")


def _pinned(r: dict) -> str:
    """Where the 2PC parties ran (records since session 7, `privinfer/affinity.py`): each pinned to its own core,
    or placed by the scheduler (`--no-pin`); "—" for older records and plans without 2PC parties."""
    if "party_cores" not in r or (not r["party_cores"] and r["protocol"] not in ("ss", "hybrid")):
        return "—"
    return "pinned" if r["party_cores"] else "free"


def _load(r: dict) -> str:
    """The 1-minute load average at the start and the end of the measurement (records since planner-acc)."""
    ld = r.get("load") or {}
    vals = [(ld.get(k) or {}).get("load_average_1min") for k in ("start", "end")]
    return "/".join("?" if v is None else f"{v:.1f}" for v in vals) if ld else "-"


if __name__ == "__main__":
    main(sys.argv[1:])
