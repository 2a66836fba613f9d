"""The inversion attack and its metrics (SSIM, re-identification)."""
import numpy as np
import pytest

from privinfer import zoo
from privinfer.attacks import inversion_attack, reidentification_top1, ssim
from privinfer.model.ir import AvgPool2d, Flatten, Graph
from privinfer.privacy import PrivatizerConfig


@pytest.fixture(scope="module")
def digits():
    Xtr, _ = zoo.load_dataset("digits", "train")
    Xte, _ = zoo.load_dataset("digits", "test")
    return Xtr[:400], Xte[:120]  # a tiny setting: seconds, not minutes


def test_ssim_properties():
    rng = np.random.default_rng(0)
    a = rng.random((4, 28, 28))
    assert np.allclose(ssim(a, a), 1.0)
    assert np.allclose(ssim(a, a[::-1]), ssim(a[::-1], a))
    noisy = np.clip(a + rng.normal(0, 0.2, a.shape), 0, 1)
    very = np.clip(a + rng.normal(0, 0.5, a.shape), 0, 1)
    assert np.all(ssim(a, very) < ssim(a, noisy)) and np.all(ssim(a, noisy) < 1)


def test_ssim_matches_scikit_image_when_installed():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(1)
    a, b = rng.random((28, 28)), rng.random((28, 28))
    want = metrics.structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False)
    assert ssim(a, b)[0] == pytest.approx(want, abs=1e-6)


def test_reidentification():
    rng = np.random.default_rng(2)
    x = rng.random((30, 1, 8, 8))
    assert reidentification_top1(x, x) == 1.0
    assert reidentification_top1(x[::-1], x) < 0.2


def test_inversion_error_decreases_as_epsilon_grows(digits):
    Xtr, Xte = digits
    client = Graph((1, 28, 28), (AvgPool2d(4, 4), Flatten()))  # 49 features: a tiny, fast prefix
    clip = float(np.median(Xtr.reshape(len(Xtr), 1, 7, 4, 7, 4).mean((3, 5)).sum((1, 2, 3))))
    res = [inversion_attack(client, PrivatizerConfig(eps, "laplace", clip), Xtr, Xte, epochs=12, hidden=64,
                            lr=3e-3) for eps in (1.0, 200.0, "inf")]
    mse = [r.mse for r in res]
    assert mse[0] > mse[1] > mse[2]
    assert res[0].mse > 0.9 * res[0].mse_baseline  # heavy noise: no better than the mean image
    assert res[2].mse < 0.6 * res[2].mse_baseline and res[2].reid_top1 > 0.25 > 0.1 > res[0].reid_top1
    assert res[2].ssim > res[0].ssim
