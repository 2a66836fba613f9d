"""Local differential privacy for noisy feature offloading: mechanisms and the session accountant.

See `mechanisms` for exactly what is guaranteed (and what is not) and `accountant` for composition.
"""
from .accountant import PrivacyAccountant, gdp_epsilon, rdp_epsilon
from .mechanisms import (MECHANISMS, NoiseSource, Privatizer, PrivatizerConfig, clip_rows, epsilon_json,
                         gaussian_delta, gaussian_sigma_analytic, gaussian_sigma_classical, laplace_scale,
                         parse_epsilon)


def ldp_accuracy_bound(epsilon: float, classes: int, max_class_fraction: float | None = None,
                       delta: float = 0.0) -> float:
    """Upper bound on the accuracy of ANY classifier fed by an (epsilon, delta)-LDP release of the input.

    Pick one input x_c per class and let a_c = P(decide c | x_c). DP gives, for c' != c,
    P(decide c | x_c') >= (a_c - delta) e^-eps; the decisions for x_c' sum to 1, so summing over c',
    (sum_c a_c)(1 + (k - 1) e^-eps) <= k (1 + (k - 1) delta e^-eps). The accuracy under a prior with largest
    class probability p_max is therefore at most p_max * k (1 + (k-1) delta e^-eps) / (1 + (k-1) e^-eps).
    With delta = 0 and a uniform prior this is e^eps / (e^eps + k - 1), attained by k-ary randomized response.
    """
    import math
    if math.isinf(epsilon):
        return 1.0
    p = 1.0 / classes if max_class_fraction is None else float(max_class_fraction)
    q = (classes - 1) * math.exp(-epsilon)
    return min(1.0, p * classes * (1 + q * delta) / (1 + q))


__all__ = ["PrivacyAccountant", "gdp_epsilon", "rdp_epsilon", "MECHANISMS", "NoiseSource", "Privatizer",
           "PrivatizerConfig", "clip_rows", "epsilon_json", "gaussian_delta", "gaussian_sigma_analytic",
           "gaussian_sigma_classical", "laplace_scale", "parse_epsilon", "ldp_accuracy_bound"]
