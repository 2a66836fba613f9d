"""Which protocol runs on which zoo network: a table of rules, not a list of rows.

Why: the matrix must grow with the zoo and the protocol registry. Each `Rule` names a protocol, its
options and what a network must offer for the rule to apply (any network, a polynomial one, HE-friendly
after rewriting, a default hybrid plan, a noisy split). `build_cases` crosses the rules with
`zoo.list_networks()` and `available_protocols()`; whatever does not apply is listed with the reason,
and a registered protocol without a rule is reported too, so that a new protocol is never silently
missing from the matrix.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import numpy as np

from .. import zoo
from ..protocols.base import available_protocols
from ..zoo.plans import default_plan

MATRICES = ("default", "quick")


@dataclass(frozen=True)
class Rule:
    protocol: str
    label: str
    options: dict = field(default_factory=dict)
    #: "any" | "polynomial" (zoo network without ReLU/max pool) | "he" (polynomial, or a ReLU network's
    #: HE-friendly variant) | "plan" (the zoo has a default hybrid plan) | "noisy" (split after the first block)
    needs: str = "any"
    max_macs: float = 5e6  # multiply-accumulates per image above which the row would not fit the time budget
    batch: int = 1
    samples: int = 5
    warmup: int = 1
    epsilons: tuple = (None,)
    quick: bool = False  # part of --matrix quick


RULES: tuple[Rule, ...] = (
    Rule("plain", "plain", max_macs=float("inf"), quick=True),
    Rule("he", "he (latency, flood)", {"packing": "latency", "circuit_privacy": "flood"}, needs="he", samples=3),
    # statistical circuit privacy (no flooding): the polynomial networks only, to keep the matrix in budget
    Rule("he", "he (latency, fast)", {"packing": "latency", "circuit_privacy": "fast"}, needs="polynomial",
         samples=3, quick=True),
    # one batch of slots/2 images per query (4096 at N=16384): one timed query, no warm-up
    Rule("he", "he (batch)", {"packing": "batch"}, needs="polynomial", batch=4096, samples=1, warmup=0),
    Rule("ss", "ss (local dealer)", {"dealer": "local"}, quick=True),
    Rule("cheetah", "cheetah (dealer-free)", samples=3),
    # noisy trains one model per (network, ε) on first use (~15 s each, then cached): not in --matrix quick
    Rule("noisy", "noisy", needs="noisy", batch=20, epsilons=(1.0, 5.0, 10.0)),
    Rule("hybrid", "hybrid (zoo plan)", {"dealer": "local"}, needs="plan", samples=3),
)

QUICK_SAMPLES = 2


@dataclass(frozen=True)
class Case:
    rule: Rule
    model: str  # zoo name
    variant: str | None = None  # "he-friendly": ReLU -> x², max pool -> avg pool, fine-tuned
    epsilon: float | None = None
    options: dict = field(default_factory=dict)
    samples: int = 5

    @property
    def name(self) -> str:
        eps = f" ε={self.epsilon:g}" if self.epsilon is not None else ""
        var = f" [{self.variant}]" if self.variant else ""
        return f"{self.rule.label}{eps} / {self.model}{var}"


@functools.lru_cache(maxsize=None)
def architecture(name: str):
    """The zoo network's Graph with untrained weights: shapes and layer kinds, without training a network
    that is not shipped (e.g. minionn-cifar) just to decide whether a rule applies."""
    from ..model.compile import compile_model
    return compile_model(zoo.build_network(name))


def macs(graph) -> int:
    """Multiply-accumulates of one image through the convolutions and fully connected layers."""
    total = 0
    for layer, out in zip(graph.layers, graph.shapes[1:]):
        if layer.kind == "conv2d":
            total += int(np.prod(out)) * int(np.prod(layer.weight.shape[1:]))
        elif layer.kind == "linear":
            total += int(np.prod(layer.weight.shape))
    return total


def noisy_split(graph) -> int | None:
    """The layer after the first non-linearity (and its pool): the client's share in the ARDEN setting."""
    for i, layer in enumerate(graph.layers):
        if layer.kind in ("relu", "poly"):
            k = i + 1
            if k < len(graph.layers) and graph.layers[k].kind in ("maxpool2d", "avgpool2d"):
                k += 1
            return k if 0 < k < len(graph.layers) else None
    return None


def _applies(rule: Rule, name: str, info, graph) -> tuple[str | None, str | None]:
    """(variant or None, None) when the rule applies, else (None, reason)."""
    if macs(graph) > rule.max_macs:
        return None, f"{macs(graph):,} MACs per image > {rule.max_macs:,.0f} (time budget)"
    if rule.needs == "polynomial" and not info.polynomial:
        return None, "not polynomial (ReLU / max pool)"
    if rule.needs == "he" and not info.polynomial:
        if f"{name}-he" in zoo.NETWORKS:
            return None, f"the zoo's {name}-he is benchmarked instead"
        return "he-friendly", None
    if rule.needs == "plan" and default_plan(name) is None:
        return None, "no default hybrid plan in privinfer.zoo.plans"
    if rule.needs == "noisy" and noisy_split(graph) is None:
        return None, "no split after a first non-linear block"
    return None, None


def build_cases(matrix: str = "default", only: list[str] | None = None,
                networks: list[str] | None = None) -> tuple[list[Case], list[dict]]:
    """(cases to run, [{case, reason}] for what does not apply) for `matrix` ("default" or "quick")."""
    if matrix not in MATRICES:
        from ..errors import PrivinferError
        raise PrivinferError(f"unknown matrix {matrix!r}; choose from {', '.join(MATRICES)}")
    registered = set(available_protocols())
    skipped = [{"case": p, "reason": "registered protocol without a matrix rule (privinfer.benchsuite.cases.RULES)"}
               for p in sorted(registered - {r.protocol for r in RULES})]
    names = networks or zoo.list_networks()
    if matrix == "quick" and not networks:  # the smallest polynomial network: every quick rule applies to it
        poly = [n for n in names if zoo.NETWORKS[n].polynomial]
        names = sorted(poly, key=lambda n: macs(architecture(n)))[:1]
    cases = []
    for rule in RULES:
        if only and rule.protocol not in only and rule.label not in only:
            continue
        if matrix == "quick" and not rule.quick:
            continue
        if rule.protocol not in registered:
            skipped.append({"case": rule.label, "reason": f"protocol {rule.protocol!r} is not registered"})
            continue
        for name in names:
            info, graph = zoo.NETWORKS[name], architecture(name)
            variant, reason = _applies(rule, name, info, graph)
            if reason:
                skipped.append({"case": f"{rule.label} / {name}", "reason": reason})
                continue
            opts = dict(rule.options)
            if rule.needs == "plan":
                opts["plan"] = default_plan(name)
            samples = QUICK_SAMPLES if matrix == "quick" else rule.samples
            for eps in rule.epsilons:
                cases.append(Case(rule, name, variant, eps, opts, samples))
    return cases, skipped
