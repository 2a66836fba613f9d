"""The planner's prediction for each validation record under this session's round rule and under the earlier
ones, from the same calibration and counts: the A/B of the model, not of the machine.

    PRIVINFER_CACHE=... python benchmarks/planner_old_new.py OUT/auto_*.json

Rules: `total` (session 9, `cost.Cost.rounds_s` with the engine's slack per round: every row adds its rounds x
max(0, RTT - slack), the rows add up to the query's rounds x RTT - total slack), `per round` (session 8: each
round max(0, RTT - its counted median slack)), `rounds x RTT` (before).
Why a script: the measurement is one run; the rules differ only in how they price its rounds, so the same
records and the same counted pieces price all of them (with the current calibration and counts, `PRIVINFER_CACHE`:
run it right after the validation, before anything recounts; the per-round rule uses the counted pieces' own
samples, as session 8 did). The link is priced as measured (`bench.link_as_measured`: the TCP round
trip the bench timed on it, at the nominal rate) and nominal."""
from __future__ import annotations

import json
import statistics
import sys

from privinfer import zoo
from privinfer.bench import link_as_measured
from privinfer.planner import table
from privinfer.planner.auto import price_plan
from privinfer.planner.cost import PROFILES, Cost, NetworkProfile
from privinfer.planner.search import path_latency, path_value


def _per_round(c: Cost, rtt_s: float) -> float:
    """Session 8's rule: each 2PC round max(0, RTT - its median slack), the other rounds a full RTT."""
    measured = [r for r in c.slack if r]
    return max(0, c.rounds - len(measured)) * rtt_s + sum(max(0.0, rtt_s - max(0.0, statistics.median(r)))
                                                         for r in measured)


def _counted_slack_plan(graph, r: dict):
    """The record's plan priced with the counted pieces' own slack samples, not the engine's per round."""
    saved = table.engine_slack_per_round
    table.engine_slack_per_round = lambda data: None
    try:
        return price_plan(graph, r["plan_string"], PROFILES[r["network"]], calibration=r["calibration"])
    finally:
        table.engine_slack_per_round = saved


def _latency(rows, prof: NetworkProfile, rounds) -> float:
    f = lambda c: c.compute_s + rounds(c, prof.rtt_ms / 1e3) + prof.transfer_s(c.wire)  # noqa: E731
    return path_value(rows, f, overlap=True)


def main(paths: list[str]) -> None:
    print("| model | network | plan | measured | total rule: as measured; nominal | error | per-round rule: as measured "
          "| error | rounds x RTT: as measured | error |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for path in paths:
        for r in json.load(open(path)):
            if not r.get("auto"):
                continue
            nominal = PROFILES[r["network"]]
            measured = link_as_measured(nominal, r.get("link_rtt_ms_measured") or {})
            graph = zoo.load_model(r["model"])
            plan = price_plan(graph, r["plan_string"], nominal, calibration=r["calibration"])
            m = r["latency_s"]["median"]
            new = (path_latency(plan.rows, measured), path_latency(plan.rows, nominal))
            counted = _counted_slack_plan(graph, r)  # session 8 priced each round with its counted samples
            per = _latency(counted.rows, measured, _per_round)
            old = _latency(plan.rows, measured, lambda c, rtt: c.rounds * rtt)
            print(f"| {r['model']} | {r['network']} | `{r['plan_string']}` | {m:.3f} s | {new[0]:.3f} s; {new[1]:.3f} s | "
                  f"{100 * (new[0] / m - 1):+.0f}%; {100 * (new[1] / m - 1):+.0f}% | {per:.3f} s | "
                  f"{100 * (per / m - 1):+.0f}% | {old:.3f} s | {100 * (old / m - 1):+.0f}% |")

if __name__ == "__main__":
    main(sys.argv[1:])
