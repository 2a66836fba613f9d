"""The privatizer's mechanisms (noise scale, clipping, nullification) and the session accountant."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from privinfer.errors import BudgetExceededError, PrivinferError
from privinfer.privacy import (NoiseSource, PrivacyAccountant, Privatizer, PrivatizerConfig, clip_rows,
                               gaussian_delta, gaussian_sigma_analytic, gaussian_sigma_classical,
                               ldp_accuracy_bound, parse_epsilon, rdp_epsilon)
from privinfer.privacy.torch_ops import torch_privatize

SEED = 1234  # tests only: production noise comes from os.urandom


def noise_of(cfg, n=4000, d=25):
    """Noise the privatizer adds to all-zero features (clipping leaves zeros alone)."""
    return Privatizer(cfg, rng=np.random.default_rng(SEED))(np.zeros((n, d)))


@pytest.mark.parametrize("eps,clip", [(0.5, 1.0), (1.0, 3.0), (10.0, 0.25)])
def test_laplace_scale_is_2c_over_eps(eps, clip):
    cfg = PrivatizerConfig(eps, "laplace", clip)
    b = 2 * clip / eps
    assert cfg.sensitivity == 2 * clip and cfg.scale == pytest.approx(b, rel=1e-15)
    z = noise_of(cfg).ravel()
    assert stats.kstest(z, stats.laplace(scale=b).cdf).pvalue > 1e-3
    assert np.mean(np.abs(z)) == pytest.approx(b, rel=0.03)  # E|Lap(b)| = b
    assert np.var(z) == pytest.approx(2 * b * b, rel=0.06)


@pytest.mark.parametrize("eps,delta", [(0.5, 1e-5), (1.0, 1e-5), (4.0, 1e-6)])
def test_gaussian_scale_is_the_analytic_sigma(eps, delta):
    cfg = PrivatizerConfig(eps, "gaussian", 1.5, delta=delta)
    sigma = cfg.scale
    # the exact condition of Balle & Wang (2018, Thm 8) holds at sigma and fails just below it
    assert gaussian_delta(sigma, eps, 3.0) <= delta < gaussian_delta(sigma * (1 - 1e-6), eps, 3.0)
    z = noise_of(cfg).ravel()
    assert stats.kstest(z, stats.norm(scale=sigma).cdf).pvalue > 1e-3
    assert np.std(z) == pytest.approx(sigma, rel=0.03)


def test_gaussian_classical_formula_and_its_range():
    sigma = gaussian_sigma_classical(0.5, 1e-5, 2.0)
    assert sigma == pytest.approx(2.0 * math.sqrt(2 * math.log(1.25 / 1e-5)) / 0.5)
    assert PrivatizerConfig(0.5, "gaussian-classical", 1.0, delta=1e-5).scale == pytest.approx(sigma)
    assert gaussian_sigma_analytic(0.5, 1e-5, 2.0) < sigma  # the analytic calibration is tighter
    with pytest.raises(PrivinferError, match="0 < epsilon < 1"):
        PrivatizerConfig(1.0, "gaussian-classical", 1.0, delta=1e-5)


def test_parameters_are_validated():
    assert parse_epsilon(None) == parse_epsilon("inf") == math.inf
    for bad in (0, -1, "x", float("nan")):
        with pytest.raises(PrivinferError):
            parse_epsilon(bad)
    with pytest.raises(PrivinferError, match="clip"):
        PrivatizerConfig(1.0, "laplace", None)
    with pytest.raises(PrivinferError, match="delta"):
        PrivatizerConfig(1.0, "gaussian", 1.0, delta=0.0)
    with pytest.raises(PrivinferError, match="nullify"):
        PrivatizerConfig(1.0, "laplace", 1.0, nullify=1.0)
    assert PrivatizerConfig("inf").scale == 0.0


finite = st.floats(-1e6, 1e6, allow_nan=False)
anything = st.floats(allow_nan=True, allow_infinity=True, width=64)


@given(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=4, max_side=6), elements=anything),
       st.floats(1e-6, 1e6), st.sampled_from(["l1", "l2"]))
def test_clipping_bound_holds_for_any_input(v, clip, norm):
    out = clip_rows(v, clip, norm)
    assert out.shape == (v.shape[0], int(np.prod(v.shape[1:])))
    assert np.all(np.isfinite(out))
    n = np.abs(out).sum(1) if norm == "l1" else np.sqrt((out * out).sum(1))
    assert np.all(n <= clip)


@given(hnp.arrays(np.float64, (3, 5), elements=finite), st.sampled_from(["l1", "l2"]))
def test_clipping_leaves_small_vectors_alone(v, norm):
    n = np.abs(v).sum(1) if norm == "l1" else np.sqrt((v * v).sum(1))
    clip = float(n.max()) * 2 + 1.0
    assert np.array_equal(clip_rows(v, clip, norm), v)


def test_nullification_zeroes_a_random_fraction():
    cfg = PrivatizerConfig("inf", "laplace", None, nullify=0.25)
    out = Privatizer(cfg, rng=np.random.default_rng(SEED))(np.ones((200, 40)))
    assert np.all((out == 0).sum(1) == 10)
    assert len({tuple(np.flatnonzero(r == 0)) for r in out}) > 150  # masks differ between samples


def test_noise_source_defaults_to_os_entropy():
    src = NoiseSource()
    assert src.kind == "os.urandom"
    a, b = src.uniform((1000,)), src.uniform((1000,))
    assert not np.array_equal(a, b) and 0 < a.min() and a.max() < 1


def test_torch_privatizer_matches_numpy_scale():
    cfg = PrivatizerConfig(2.0, "laplace", 1.0)
    z = torch_privatize(torch.zeros(4000, 25, dtype=torch.float64), cfg, torch.Generator().manual_seed(SEED))
    assert stats.kstest(z.numpy().ravel(), stats.laplace(scale=cfg.scale).cdf).pvalue > 1e-3


@pytest.mark.parametrize("mech,delta", [("laplace", 0.0), ("gaussian", 1e-5)])
def test_composition_is_monotone(mech, delta):
    acc = PrivacyAccountant(PrivatizerConfig(1.0, mech, 1.0, delta=delta))
    totals = [acc.epsilon_total(n) for n in (0, 1, 2, 3, 5, 10, 50, 200)]
    assert totals[0] == 0.0 and totals[1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(totals, totals[1:]))
    if mech == "laplace":
        assert totals[-1] == 200.0
    else:  # opacus RDP, and the exact GDP composition never exceeds it
        cfg = acc.config
        assert acc.epsilon_total(10) == pytest.approx(rdp_epsilon(cfg.scale / cfg.sensitivity, 10, delta))
        assert all(acc.epsilon_total_exact(n) <= acc.epsilon_total(n) + 1e-9 for n in (1, 2, 10, 200))
        assert acc.epsilon_total(200) < 200.0  # far below basic composition


def test_budget_refuses_and_records_nothing():
    acc = PrivacyAccountant(PrivatizerConfig(1.0, "laplace", 1.0), budget=3.0)
    acc.record(2)
    with pytest.raises(BudgetExceededError, match="budget"):
        acc.record(2)
    assert acc.releases == 2 and acc.refused == 1
    acc.record(1)
    assert acc.report()["epsilon_total"] == 3.0 and acc.remaining() == 0.0
    with pytest.raises(BudgetExceededError):
        acc.check(1)


def test_ldp_accuracy_bound():
    assert ldp_accuracy_bound(1.0, 10) == pytest.approx(math.e / (math.e + 9))
    assert ldp_accuracy_bound(math.inf, 10) == 1.0
    assert ldp_accuracy_bound(0.0001, 10) == pytest.approx(0.1, abs=1e-4)
