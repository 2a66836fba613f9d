"""Privacy accounting over a client session: per-release (epsilon, delta) and their composition.

Unit of accounting: one *release* = one sample's privatized feature vector. A query with a batch of B
samples makes B releases. The session total composes over every release of the session; it is the
guarantee for anything the session's inputs have in common (e.g. the same person in every image, or
the same image queried twice). For a single input that is queried once, its own guarantee is the
per-release (epsilon, delta) (parallel composition over distinct, independent inputs).

- Laplace (pure epsilon-DP): basic composition, epsilon_total = n * epsilon, delta = 0 (Dwork & Roth 2014,
  Thm 3.16). For pure DP this sum is tight: the Laplace privacy loss reaches epsilon with positive probability
  in each release independently, so the n-fold loss reaches n * epsilon with positive probability. Tighter
  totals exist only by giving up pure DP (advanced composition / RDP with delta > 0).
- Gaussian: Opacus' RDP accountant (`opacus.accountants.RDPAccountant`; Mironov, CSF 2017) with
  noise_multiplier = sigma / Delta_2, sample_rate = 1, one step per release, converted to epsilon at the
  session delta (= the per-release delta). A single release reports its exact calibrated (epsilon, delta)
  (the RDP conversion is looser). `epsilon_total_exact` gives the tight value from Gaussian differential
  privacy (Dong, Roth, Su 2019: n Gaussian releases compose exactly to one with mu = sqrt(n) Delta / sigma).
"""
from __future__ import annotations

import math

from ..errors import BudgetExceededError, PrivinferError
from .mechanisms import PrivatizerConfig, epsilon_json, gaussian_delta


def gdp_epsilon(mu: float, delta: float) -> float:
    """Smallest epsilon with delta_mu(epsilon) <= delta for mu-GDP (exact Gaussian privacy profile)."""
    if mu <= 0:
        return 0.0
    # a mu-GDP mechanism is a Gaussian mechanism with sensitivity mu and sigma 1
    f = lambda e: gaussian_delta(1.0, e, mu)  # noqa: E731
    if f(0.0) <= delta:
        return 0.0
    lo, hi = 0.0, 1.0
    while f(hi) > delta:
        lo, hi = hi, hi * 2.0
        if hi > 1e6:
            return math.inf
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if f(mid) > delta:
            lo = mid
        else:
            hi = mid
    return hi


def rdp_epsilon(noise_multiplier: float, steps: int, delta: float) -> float:
    """Opacus' RDP accountant: `steps` full-batch (sample_rate 1) Gaussian steps, epsilon at `delta`."""
    from opacus.accountants import RDPAccountant
    acc = RDPAccountant()
    acc.history = [(float(noise_multiplier), 1.0, int(steps))]
    return float(acc.get_epsilon(delta=delta))


class PrivacyAccountant:
    """Counts releases and reports (epsilon, delta) per release and for the session; enforces a budget."""

    def __init__(self, config: PrivatizerConfig, budget: float | None = None):
        self.config = config
        if budget is not None:
            budget = float(budget)
            if not (budget > 0 and not math.isnan(budget)):
                raise PrivinferError(f"budget must be a total epsilon > 0, got {budget!r}")
        self.budget = budget
        self.releases = 0
        self.refused = 0
        self._cache: dict[int, float] = {}

    # --- composition ----------------------------------------------------------------------------
    def _trivial_total(self, n: int) -> float | None:
        """The session epsilon where no composition theorem is needed (none, no noise, pure DP), else None."""
        if n <= 0:
            return 0.0
        if not self.config.noisy:
            return math.inf
        if self.config.mechanism == "laplace":
            return n * self.config.epsilon  # basic composition, tight for pure epsilon-DP
        return None

    def epsilon_total(self, releases: int | None = None) -> float:
        """The session epsilon after `releases` releases (default: so far), at delta_total()."""
        n = self.releases if releases is None else int(releases)
        cfg = self.config
        trivial = self._trivial_total(n)
        if trivial is not None:
            return trivial
        if n == 1:
            return cfg.epsilon
        if n not in self._cache:
            self._cache[n] = rdp_epsilon(cfg.scale / cfg.sensitivity, n, cfg.delta)
        return self._cache[n]

    def delta_total(self) -> float:
        return 0.0 if self.config.mechanism == "laplace" else self.config.delta

    def epsilon_total_exact(self, releases: int | None = None) -> float:
        """Tight session epsilon: n*eps for Laplace (tight for pure DP), exact GDP composition for Gaussian."""
        n = self.releases if releases is None else int(releases)
        cfg = self.config
        trivial = self._trivial_total(n)
        if trivial is not None:
            return trivial
        return gdp_epsilon(math.sqrt(n) * cfg.sensitivity / cfg.scale, cfg.delta)

    # --- budget ---------------------------------------------------------------------------------
    def check(self, releases: int) -> None:
        """Raise BudgetExceededError if `releases` more releases would exceed the budget (nothing recorded)."""
        if self.budget is None:
            return
        after = self.epsilon_total(self.releases + int(releases))
        if after > self.budget:
            self.refused += 1
            spent = self.epsilon_total()
            raise BudgetExceededError(
                f"query refused before sending: {releases} more release(s) would bring the session epsilon "
                f"from {spent:.4g} to {after:.4g}, over the budget {self.budget:.4g} "
                f"({self.config.mechanism}, epsilon {epsilon_json(self.config.epsilon)} per sample)")

    def record(self, releases: int) -> None:
        self.check(releases)
        self.releases += int(releases)

    def remaining(self) -> float | None:
        return None if self.budget is None else max(self.budget - self.epsilon_total(), 0.0)

    def report(self) -> dict:
        cfg = self.config
        out = {
            "mechanism": cfg.mechanism,
            "epsilon_per_query": epsilon_json(cfg.epsilon),
            "delta_per_query": cfg.delta,
            "releases": self.releases,
            "epsilon_total": epsilon_json(self.epsilon_total()),
            "delta_total": self.delta_total(),
            "accountant": ("none (no noise)" if not cfg.noisy else
                           "basic composition (pure epsilon-DP: sum, tight)" if cfg.mechanism == "laplace" else
                           "opacus RDPAccountant (sample_rate 1, one step per release)"),
            "budget": self.budget,
            "budget_remaining": self.remaining(),
            "refused_queries": self.refused,
        }
        if cfg.noisy and cfg.mechanism != "laplace":
            out["epsilon_total_exact"] = epsilon_json(self.epsilon_total_exact())
        return out
