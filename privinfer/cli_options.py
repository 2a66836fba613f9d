"""Option parsing shared by the command line's subcommands (`cli.py`, `cli_bench.py`)."""
from __future__ import annotations

import json

from .errors import PrivinferError


def parse_options(pairs: list[str]) -> dict:
    """`-o key=value` pairs; values are read as JSON when they parse (numbers, true, lists), else strings."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise PrivinferError(f"option {p!r} must look like key=value")
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def policy_options(a) -> dict:
    """The planner's flags (serve/plan/bench with --protocol auto) as `resolve_auto` options."""
    out = {"network": a.network if isinstance(a.network, str) else a.network[0], "objective": a.objective,
           "model_private": not a.no_model_private, "trusted_dealer": not a.no_dealer,
           "hiding": getattr(a, "plan_hiding", "perfect")}
    if getattr(a, "plan_epsilon", None) is not None:
        out["epsilon"] = a.plan_epsilon
    if getattr(a, "calibration", None):
        out["calibration"] = a.calibration
    return out
