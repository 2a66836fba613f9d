"""The planner's prediction for each validation record under the per-round slack model and under the old one
(every round a full RTT), from the same calibration and counts: the A/B of the model, not of the machine.

    PRIVINFER_CACHE=... python benchmarks/planner_old_new.py OUT/auto_*.json

Why a script: the measurement is one run; the two models differ only in how they price its rounds, so the
same records and the same counted pieces price both (a `Cost` without `slack` is the old model exactly)."""
from __future__ import annotations

import json
import sys
from dataclasses import replace

from privinfer import zoo
from privinfer.planner.auto import price_plan
from privinfer.planner.cost import NetworkProfile, PROFILES
from privinfer.planner.search import path_latency


def main(paths: list[str]) -> None:
    print("| model | network | plan | measured | new: as measured; nominal | error | old: as measured; nominal | error |")
    print("|---|---|---|---|---|---|---|---|")
    for path in paths:
        for r in json.load(open(path)):
            if not r.get("auto"):
                continue
            nominal = PROFILES[r["network"]]
            link = r.get("link_rtt_ms_measured") or {}
            rtt = link.get("gloo", link.get("tcp")) if link else None
            measured = NetworkProfile(nominal.name, nominal.rate_mbit, rtt) if rtt is not None else nominal
            plan = price_plan(zoo.load_model(r["model"]), r["plan_string"], nominal, calibration=r["calibration"])
            old_rows = [replace(x, cost=replace(x.cost, slack=())) for x in plan.rows]
            m = r["latency_s"]["median"]
            new = (path_latency(plan.rows, measured), path_latency(plan.rows, nominal))
            old = (path_latency(old_rows, measured), path_latency(old_rows, nominal))
            print(f"| {r['model']} | {r['network']} | `{r['plan_string']}` | {m:.3f} s | {new[0]:.3f} s; {new[1]:.3f} s | "
                  f"{100 * (new[0] / m - 1):+.0f}%; {100 * (new[1] / m - 1):+.0f}% | {old[0]:.3f} s; {old[1]:.3f} s | "
                  f"{100 * (old[0] / m - 1):+.0f}%; {100 * (old[1] / m - 1):+.0f}% |")


if __name__ == "__main__":
    main(sys.argv[1:])
