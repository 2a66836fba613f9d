"""Compiler + reference executor against torch itself, over random architectures (hypothesis)."""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st
from torch import nn
import torch.nn.functional as F

from privinfer.errors import ShapeError, UnsupportedLayerError
from privinfer.model import compile_model, load_graph, run_reference, save_graph
from privinfer.model.ir import Graph, graph_to_bytes
from privinfer.model.torch_layers import PolyAct, Square


@st.composite
def conv_nets(draw):
    """A random chain: conv blocks (+BN, activation, pooling), flatten, dense blocks."""
    torch.manual_seed(draw(st.integers(0, 2**16)))
    c, h = draw(st.integers(1, 3)), draw(st.integers(8, 16))
    layers, shape = [], (c, h, h)
    for _ in range(draw(st.integers(0, 2))):
        out = draw(st.integers(1, 4))
        stride, pad = draw(st.integers(1, 2)), draw(st.integers(0, 1))
        if draw(st.booleans()):
            layers.append(nn.ZeroPad2d((0, 1, 0, 1)))
            shape = (shape[0], shape[1] + 1, shape[2] + 1)
        k = draw(st.integers(1, min(3, shape[1] + 2 * pad)))  # the kernel must fit the (padded) input
        layers.append(nn.Conv2d(shape[0], out, k, stride=stride, padding=pad, bias=draw(st.booleans())))
        size = (shape[1] + 2 * pad - k) // stride + 1
        shape = (out, size, size)
        if draw(st.booleans()):
            bn = nn.BatchNorm2d(out)
            bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.data.uniform_(0.5, 2)
            layers.append(bn)
        layers.append(draw(st.sampled_from([nn.ReLU(), Square(), PolyAct((0.1, 0.5, 0.2)), nn.Identity()])))
        if size >= 2 and draw(st.booleans()):
            layers.append(draw(st.sampled_from([nn.MaxPool2d(2), nn.AvgPool2d(2)])))
            shape = (out, size // 2, size // 2)
    layers.append(nn.Flatten())
    n = int(np.prod(shape))
    for _ in range(draw(st.integers(1, 3))):
        m = draw(st.integers(1, 12))
        layers += [nn.Linear(n, m), draw(st.sampled_from([nn.ReLU(), Square(), nn.Dropout(0.5)]))]
        n = m
    return nn.Sequential(*layers).double().eval(), (c, h, h)


@given(conv_nets(), st.integers(1, 3))
def test_reference_matches_torch(net_shape, batch):
    net, shape = net_shape
    graph = compile_model(net, shape)
    x = torch.rand(batch, *shape, dtype=torch.float64)
    expected = net(x).detach().numpy()
    np.testing.assert_allclose(run_reference(graph, x.numpy()), expected, atol=1e-5, rtol=1e-5)
    assert graph.output_shape == expected.shape[1:]
    # the public spec plus arrays round-trip through .npz without pickle
    again = load_graph(graph_to_bytes(graph))
    np.testing.assert_allclose(run_reference(again, x.numpy()), expected, atol=1e-5, rtol=1e-5)
    assert again.spec() == graph.spec()


def test_batchnorm_folded_and_dropout_dropped():
    bn = nn.BatchNorm1d(4)
    bn.running_mean.fill_(0.3)
    net = nn.Sequential(nn.Linear(3, 4), bn, nn.Dropout(), nn.ReLU(), nn.Identity(), nn.Linear(4, 2)).eval()
    g = compile_model(net)
    assert [l.kind for l in g.layers] == ["linear", "relu", "linear"]
    x = torch.rand(5, 3)
    np.testing.assert_allclose(run_reference(g, x.numpy()), net(x).detach().numpy(), atol=1e-5)


class Traced(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 2, 3, stride=2), nn.Linear(2 * 4 * 4, 3)

    def forward(self, x):
        x = self.conv(x)
        x = x.pow(2)
        x = torch.relu(x * x)
        return self.fc(x.view(x.size(0), -1))


def test_fx_traced_module():
    net = Traced().eval()
    g = compile_model(net, (1, 9, 9))
    assert [l.kind for l in g.layers] == ["conv2d", "poly", "poly", "relu", "flatten", "linear"]
    x = torch.rand(2, 1, 9, 9)
    np.testing.assert_allclose(run_reference(g, x.numpy()), net(x).detach().numpy(), atol=1e-5)


class Branchy(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x):
        return self.a(x) + x


@pytest.mark.parametrize("net,name", [(nn.Sequential(nn.LSTM(3, 3)), "LSTM"),
                                      (nn.Sequential(nn.Linear(3, 3), nn.Sigmoid()), "Sigmoid"),
                                      (Branchy(), "branching")])
def test_unsupported_layers_are_named(net, name):
    with pytest.raises(UnsupportedLayerError, match=name) as e:
        compile_model(net, (3,))
    assert "supported:" in str(e.value)


def test_shape_errors():
    with pytest.raises(ShapeError, match="input_shape is required"):
        compile_model(nn.Sequential(nn.Conv2d(1, 1, 3)))
    g = compile_model(nn.Sequential(nn.Linear(3, 2)))
    with pytest.raises(ShapeError, match="does not match"):
        run_reference(g, np.zeros((1, 4)))
    with pytest.raises(ShapeError, match="does not fit"):
        compile_model(nn.Sequential(nn.Conv2d(1, 1, 5)), (1, 3, 3))
    with pytest.raises(ShapeError, match="not a privinfer graph"):
        load_graph(b"garbage")


def test_graph_index_and_slice():
    g = compile_model(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)))
    assert g.index("1") == 1 and g.index(-1) == 2
    tail = g.slice(1)
    assert tail.input_shape == (4,) and len(tail) == 2
    zero = Graph.from_spec(g.spec())
    assert np.all(zero.layers[0].weight == 0) and zero.spec() == g.spec()


class ViewNotFlat(nn.Module):
    def forward(self, x):
        return x.view(-1, 4)


class PaddedPool(nn.Module):
    def forward(self, x):
        return torch.nn.functional.max_pool2d(x, 2, 2, 1)


@pytest.mark.parametrize("net", [ViewNotFlat(), PaddedPool(),
                                 nn.Sequential(nn.Conv2d(1, 1, 3), nn.ZeroPad2d(1), nn.BatchNorm2d(1), nn.Conv2d(1, 1, 3))])
def test_constructs_that_would_compile_wrong_are_refused(net):
    with pytest.raises(UnsupportedLayerError):
        compile_model(net.eval(), (1, 8, 8))


def test_consecutive_zero_pads_add_up():
    net = nn.Sequential(nn.ZeroPad2d(1), nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(1, 2, 3)).eval()
    g = compile_model(net, (1, 7, 7))
    x = torch.rand(2, 1, 7, 7)
    np.testing.assert_allclose(run_reference(g, x.numpy()), net(x).detach().numpy(), atol=1e-5)


# --- issue 14: the newcomer's frictions ------------------------------------------------------------
class _FunctionalPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(1, 4, 3), nn.Linear(4 * 3 * 3, 2)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv(x)), 2)
        return self.fc(torch.flatten(x, 1))


def test_functional_max_pool2d_with_default_arguments_compiles():
    m = _FunctionalPool().eval()
    g = compile_model(m, input_shape=(1, 8, 8))
    assert [l.kind for l in g.layers] == ["conv2d", "relu", "maxpool2d", "flatten", "linear"]
    x = torch.rand(2, 1, 8, 8)
    np.testing.assert_allclose(run_reference(g, x.double().numpy()), m(x).detach().numpy(), atol=1e-5)


def test_functional_max_pool2d_with_padding_names_the_argument():
    class Padded(_FunctionalPool):
        def forward(self, x):
            return self.fc(torch.flatten(F.max_pool2d(self.conv(x), 2, padding=1), 1))
    with pytest.raises(UnsupportedLayerError, match="padding=1"):
        compile_model(Padded(), input_shape=(1, 8, 8))


def test_lstm_is_named():
    class Seq(nn.Module):
        def __init__(self):
            super().__init__()
            self.lstm, self.fc = nn.LSTM(8, 16, batch_first=True), nn.Linear(16, 2)

        def forward(self, x):
            x = x.squeeze(1)  # something unsupported *before* the LSTM must not hide it
            out, _ = self.lstm(x)
            return self.fc(out[:, -1])
    with pytest.raises(UnsupportedLayerError, match=r"LSTM \(lstm\).*recurrent"):
        compile_model(Seq(), input_shape=(1, 5, 8))


def test_conv_first_error_says_how_and_input_shape_keyword_works():
    m = _FunctionalPool()
    with pytest.raises(ShapeError, match=r"input_shape=\(1, 28, 28\)"):
        compile_model(m)
    import privinfer
    with privinfer.PrivateSession(m, "plain", spawn="thread", input_shape=(1, 8, 8), warn=False) as s:
        assert s.input_shape == (1, 8, 8)


def test_input_range_is_published_and_survives_files(tmp_path):
    from privinfer.model import load_graph, save_graph
    g = compile_model(_FunctionalPool(), (1, 8, 8), input_range=(0, 1))
    assert g.input_range == (0.0, 1.0) and g.spec()["input_range"] == [0.0, 1.0]
    save_graph(g, tmp_path / "g.npz")
    assert load_graph(tmp_path / "g.npz").input_range == (0.0, 1.0)
    assert g.slice(0, 2).input_range == (0.0, 1.0) and g.slice(1).input_range is None
    with pytest.raises(ShapeError, match="lo < hi"):
        compile_model(_FunctionalPool(), (1, 8, 8), input_range=(1, 0))


def test_split_as_digits_means_the_index():
    m = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    g = compile_model(m)  # BatchNorm folded: the layer named "2" now sits at index 1
    assert g.names[1] == "2"
    assert g.index("2") == g.index(2) == 2


def test_adaptive_pool_with_a_none_size_is_a_typed_refusal():
    """AdaptiveAvgPool2d((None, 2)) keeps one input dimension: refused with the typed error, not a TypeError."""
    with pytest.raises(UnsupportedLayerError, match="None"):
        compile_model(nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d((None, 2))), (1, 8, 8))
