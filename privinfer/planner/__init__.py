"""Plans: which protocol runs which layers.

`plan.py` parses and validates a plan (imported by the hybrid engine: it stays at the bottom of the imports).
Choosing a plan (`protocol="auto"`) lives in submodules imported by path, above the protocols:
`cost.py` (costs, network profiles), `search.py` (exact DP over a candidate table, policies, objectives),
`he_cost.py` / `ss_cost.py` (counting each engine's kernels), `table.py` (the candidate rows of a network),
`calibrate.py` (`privinfer profile`), `auto.py` (`make_plan`, `resolve_auto`, `Plan.explain`).
"""
from .plan import PLAN_PROTOCOLS, Segment, layer_protocols, parse_plan, plan_string

__all__ = ["PLAN_PROTOCOLS", "Segment", "layer_protocols", "parse_plan", "plan_string"]
