"""Default hybrid plans for zoo networks: which layers run under HE and which under 2PC.

Why a table here: a plan is a property of the architecture (where the polynomial and the ReLU layers
sit), and benchmarks, examples and users should all start from the same one. A network without an entry
has no default: `default_plan` returns None and the benchmark matrix runs no hybrid row for it.
"""
from __future__ import annotations

DEFAULT_PLANS: dict[str, str] = {
    # conv-x²-conv under HE, ReLU + max pool + FC under 2PC (the network was built for this split)
    "mixed-mnist": "he:0-2,ss:3-",
    # GAZELLE's split: linear layers under HE, ReLU and max pool under 2PC
    "minionn-mnist": "he:0,ss:1-2,he:3,ss:4-5,he:6-7,ss:8,he:9",
    # the first x² under 2PC (it follows the input convolution), the rest under HE
    "cryptonets-mnist": "he:0,ss:1,he:2-",
}


def default_plan(name: str) -> str | None:
    return DEFAULT_PLANS.get(name)
