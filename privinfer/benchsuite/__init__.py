"""The benchmark suite: every applicable protocol on every zoo network, peers, network profiles, plots.

Why a package: the matrix runner is one front door (`privinfer bench --matrix`, `benchmarks/run_matrix.py`)
over small parts that change for different reasons: which cases apply (`cases`), which model a case
serves (`variants`), the network model (`netmodel`), peers and published figures (`peers`), and the
outputs (`report`, `plots`). Single measurements stay in `privinfer.bench`.
"""
from .cases import RULES, Rule, build_cases
from .runner import run_suite

__all__ = ["RULES", "Rule", "build_cases", "run_suite"]
