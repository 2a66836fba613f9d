"""make_he_friendly / finetune / fit helpers: the result is polynomial, compiles, runs under HE."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from privinfer.errors import ShapeError, UnsupportedLayerError
from privinfer.model import compile_model, run_reference
from privinfer.model.approx import (accuracy, finetune, fit_relu_graph, fit_relu_poly, make_he_friendly)
from privinfer.model.torch_layers import PolyAct, Square
from privinfer.protocols.he import HE


def _data(n=400, seed=0):
    try:
        from privinfer.zoo import load_dataset
        X, y = load_dataset("digits")
        Xt, yt = load_dataset("digits", "test")
        return X[:n], y[:n], Xt, yt
    except ImportError:  # pragma: no cover - zoo absent: a synthetic, learnable stand-in
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 10, n + 200)
        X = rng.random((n + 200, 1, 28, 28)).astype(np.float32) * 0.3
        for i, c in enumerate(y):
            X[i, 0, 2 * c:2 * c + 6, 4:24] += 0.7
        return X[:n], y[:n], X[n:], y[n:]


def _relu_model():
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 5, stride=2), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(144, 32), nn.ReLU(), nn.Linear(32, 10))
    m.input_shape = (1, 28, 28)
    return m


@pytest.fixture(scope="module")
def trained():
    X, y, Xt, yt = _data()
    m = _relu_model()
    finetune(m, (X, y), epochs=3, lr=4e-3, progress=False)
    return m, X, y, Xt, yt


def test_fit_relu_poly_is_least_squares():
    c2 = fit_relu_poly(2, -2, 2)
    x = np.linspace(-2, 2, 401)
    fit = np.polynomial.polynomial.polyval(x, c2)
    assert np.abs(fit - np.maximum(x, 0)).max() < 0.25
    assert c2[2] > 0 and abs(c2[1] - 0.5) < 1e-6
    c3 = fit_relu_poly(3, -1, 3)
    err3 = np.abs(np.polynomial.polynomial.polyval(x, c3) - np.maximum(x, 0))[x >= -1].max()
    assert err3 < 0.3
    with pytest.raises(ShapeError):
        fit_relu_poly(2, 1, 1)


@pytest.mark.parametrize("activation", ["square", "poly2", "poly3"])
def test_make_he_friendly_structure(trained, activation):
    m, X, *_ = trained
    he = make_he_friendly(m, activation, input_range=X[:200])
    kinds = {type(x).__name__ for x in he.modules()}
    assert not kinds & {"ReLU", "MaxPool2d", "BatchNorm2d"}
    assert ("Square" in kinds) if activation == "square" else ("PolyAct" in kinds)
    assert "AvgPool2d" in kinds and he.input_shape == (1, 28, 28)
    g = compile_model(he)
    HE.check_graph(g)  # no error: every layer is HE-evaluable
    # trainable, and the original is untouched
    assert any(p.requires_grad for p in he.parameters())
    assert any(isinstance(x, nn.ReLU) for x in m.modules())
    if activation != "square":
        lo, hi = he.he_ranges["2"]
        assert lo <= 0 <= hi


def test_batchnorm_folding_is_exact_before_activation_change(trained):
    m, X, *_ = trained
    ref = make_he_friendly(m, "poly2", input_range=(-50, 50))  # wide range: poly ~ relu is poor, but
    torch.manual_seed(0)
    seq = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten())
    seq.eval()
    with torch.no_grad():
        seq[1].running_mean.uniform_(-1, 1)
        seq[1].running_var.uniform_(0.5, 2)
    folded = make_he_friendly(seq, "square")
    x = torch.rand(3, 1, 6, 6)
    assert torch.allclose(seq(x), folded(x), atol=1e-5)
    assert ref is not m


def test_finetune_recovers_accuracy(trained):
    m, X, y, Xt, yt = trained
    base = accuracy(m, Xt, yt)
    he = make_he_friendly(m, "poly2", input_range=X[:300])
    rep = finetune(he, (X, y), epochs=3, lr=2e-3, progress=False, val=(Xt, yt))
    assert set(rep) >= {"accuracy_before", "accuracy_after"}
    assert rep["accuracy_after"] >= rep["accuracy_before"] - 0.02
    assert rep["accuracy_after"] >= base - 0.1, (base, rep)


def test_fit_relu_graph_on_ir(trained):
    m, X, *_ = trained
    g = compile_model(m)
    for act in ("square", "poly2", "poly3"):
        g2 = fit_relu_graph(g, act, input_range=X[:100])
        assert not {l.kind for l in g2.layers} & {"relu", "maxpool2d"}
        HE.check_graph(g2)
        assert g2.output_shape == g.output_shape
    g3 = fit_relu_graph(g, "poly2", input_range=(-1.0, 1.0))
    out = run_reference(g3, X[:4])
    assert np.all(np.isfinite(out))


def test_bad_activation_is_refused():
    with pytest.raises(UnsupportedLayerError):
        make_he_friendly(_relu_model(), "relu6")


def test_class_model_with_batchnorm_and_functional_calls_becomes_he_friendly():
    """Issue 14: BatchNorm (and F.relu / F.max_pool2d) in a class model used to block make_he_friendly."""
    import torch.nn.functional as F
    from privinfer.model import compile_model
    from privinfer.protocols.he.program import check_he_graph

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn, self.fc = nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Linear(4 * 3 * 3, 3)

        def forward(self, x):
            return self.fc(torch.flatten(F.max_pool2d(F.relu(self.bn(self.conv(x))), 2), 1))

    torch.manual_seed(0)
    net = Net()
    net.train()
    net(torch.rand(32, 1, 8, 8))  # non-trivial running statistics
    net.eval()
    X = np.random.default_rng(0).random((64, 1, 8, 8)).astype(np.float32)
    he = make_he_friendly(net, "poly2", X)
    g = compile_model(he)
    check_he_graph(g)  # HE can run it
    assert g.input_shape == (1, 8, 8) and g.input_range == (0.0, 1.0)  # calibrated on data in [0, 1]
    assert [l.kind for l in g.layers] == ["conv2d", "poly", "avgpool2d", "flatten", "linear"]
    # BatchNorm folded exactly: the conv output equals the original conv+bn
    x = torch.from_numpy(X[:4])
    want = net.bn(net.conv(x)).detach().numpy()
    got = run_reference(g, X[:4].astype(np.float64), 0, 1)
    np.testing.assert_allclose(got, want, atol=1e-5)
