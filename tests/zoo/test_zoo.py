"""The model zoo: exact architectures, compiler/reference agreement, shipped weights, data loaders."""
import gzip
import hashlib
import io
import json
import struct
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from privinfer.errors import ShapeError
from privinfer.model.compile import compile_model
from privinfer.model.reference import run_reference
from privinfer.zoo import (NETWORKS, build_network, list_networks, load_dataset, load_digits_28,
                           load_mnist_idx, load_model, load_torch_model, train_network)
from privinfer.zoo.data import IDX_DTYPES, read_idx, write_idx
from privinfer.zoo.networks import UnknownNetworkError
from privinfer.zoo.store import (SHIPPED, WEIGHTS_DIR, graph_bytes, graph_to_torch, reference_accuracy,
                                 save_weights)

C, R, P, M, A, F, L = "conv2d", "relu", "poly", "maxpool2d", "avgpool2d", "flatten", "linear"
EXPECTED = {
    "cryptonets-mnist": ([C, P, F, L, P, L], [(5, 13, 13), (5, 13, 13), (845,), (100,), (100,), (10,)]),
    "minionn-mnist": ([C, R, M, C, R, M, F, L, R, L],
                      [(16, 24, 24), (16, 24, 24), (16, 12, 12), (16, 8, 8), (16, 8, 8), (16, 4, 4), (256,),
                       (100,), (100,), (10,)]),
    "secureml-mnist": ([F, L, P, L, P, L], [(784,), (128,), (128,), (128,), (128,), (10,)]),
    "deepsecure-mnist": ([C, R, F, L, R, L], [(5, 14, 14), (5, 14, 14), (980,), (100,), (100,), (10,)]),
    "tenseal-mnist": ([C, P, F, L, P, L], [(4, 8, 8), (4, 8, 8), (256,), (64,), (64,), (10,)]),
    "mixed-mnist": ([C, P, C, R, M, F, L], [(5, 12, 12), (5, 12, 12), (10, 10, 10), (10, 10, 10), (10, 5, 5), (250,),
                                            (10,)]),
    "minionn-mnist-he": ([C, P, A, C, P, A, F, L, P, L],
                         [(16, 24, 24), (16, 24, 24), (16, 12, 12), (16, 8, 8), (16, 8, 8), (16, 4, 4), (256,),
                          (100,), (100,), (10,)]),
    "wide-mlp-mnist": ([F, L, R, L], [(784,), (1024,), (1024,), (10,)]),
    "minionn-cifar": ([C, R, C, R, A, C, R, C, R, A, C, R, C, R, C, R, F, L],
                      [(64, 32, 32)] * 4 + [(64, 16, 16)] * 5 + [(64, 8, 8)] * 5 + [(16, 8, 8)] * 2
                      + [(1024,), (10,)]),
}


def test_registry():
    assert list_networks() == list(EXPECTED)
    assert set(SHIPPED) == set(EXPECTED) - {"minionn-cifar", "wide-mlp-mnist"}
    with pytest.raises(UnknownNetworkError):
        build_network("lenet-9000")


@pytest.mark.parametrize("name", list(EXPECTED))
def test_architecture(name):
    model = build_network(name)
    graph = compile_model(model)
    kinds, shapes = EXPECTED[name]
    assert [l.kind for l in graph.layers] == kinds
    assert list(graph.shapes[1:]) == shapes
    assert graph.input_shape == model.input_shape == ((3, 32, 32) if name == "minionn-cifar" else (1, 28, 28))
    poly_only = all(k in (C, L, P, A, F) for k in kinds)
    assert NETWORKS[name].polynomial == poly_only
    for layer in graph.layers:
        if layer.kind == P:
            assert layer.coeffs == (0.0, 0.0, 1.0)


def test_layer_hyperparameters():
    conv = compile_model(build_network("cryptonets-mnist")).layers[0]
    assert conv.kernel == (5, 5) and conv.stride == (2, 2) and conv.padding == (0, 1, 0, 1)
    conv = compile_model(build_network("deepsecure-mnist")).layers[0]
    assert conv.kernel == (5, 5) and conv.stride == (2, 2) and conv.padding == (2, 2, 2, 2)
    conv = compile_model(build_network("tenseal-mnist")).layers[0]
    assert conv.kernel == (7, 7) and conv.stride == (3, 3) and conv.padding == (0, 0, 0, 0)
    cifar = [l for l in compile_model(build_network("minionn-cifar")).layers if l.kind == C]
    assert [l.kernel for l in cifar] == [(3, 3)] * 5 + [(1, 1)] * 2


@pytest.mark.parametrize("name", list(EXPECTED))
def test_reference_matches_torch(name):
    torch.manual_seed(1)
    model = build_network(name).eval()
    x = np.random.default_rng(0).random((3, *model.input_shape))
    graph = compile_model(model)
    ref = run_reference(graph, x)
    with torch.no_grad():
        out64 = model.double()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ref, out64, rtol=1e-7, atol=1e-5)
    with torch.no_grad():
        out32 = model.float()(torch.from_numpy(x).float()).numpy()
    np.testing.assert_allclose(ref, out32, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def digits_test():
    return load_digits_28("test")


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_weights(name, digits_test):
    path = WEIGHTS_DIR / f"{name}.npz"
    meta = json.loads(path.with_suffix(".json").read_text())
    data = path.read_bytes()
    assert len(data) < 1_000_000
    assert hashlib.sha256(data).hexdigest() == meta["sha256"]
    graph = load_model(name, train_if_missing=False)
    assert graph_bytes(graph) == data  # re-serializing is byte-identical
    X, y = digits_test
    acc = reference_accuracy(graph, X, y)
    assert acc >= 0.95
    assert acc == pytest.approx(meta["test_accuracy"], abs=1e-6)
    # the torch model rebuilt from the graph computes the same function
    model = load_torch_model(name, train_if_missing=False)
    assert compile_model(model).spec() == graph.spec()
    with torch.no_grad():
        out = model.double()(torch.from_numpy(X[:64]).double()).numpy()
    np.testing.assert_allclose(out, run_reference(graph, X[:64]), rtol=1e-7, atol=1e-5)


def test_graph_to_torch_roundtrip():
    torch.manual_seed(3)
    graph = compile_model(build_network("cryptonets-mnist"))
    back = compile_model(graph_to_torch("cryptonets-mnist", graph))
    for k, v in graph.arrays().items():
        np.testing.assert_array_equal(back.arrays()[k], v)
    with pytest.raises(ShapeError):
        graph_to_torch("tenseal-mnist", graph)


def test_graph_bytes_are_canonical():
    torch.manual_seed(0)
    graph = compile_model(build_network("tenseal-mnist"))
    data = graph_bytes(graph)
    assert data == graph_bytes(graph)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert {i.date_time for i in z.infolist()} == {(1980, 1, 1, 0, 0, 0)}


def test_save_weights_and_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVINFER_CACHE", str(tmp_path / "cache"))
    with pytest.raises(FileNotFoundError):
        load_model("minionn-cifar", train_if_missing=False)
    torch.manual_seed(0)
    with pytest.raises(ShapeError):
        save_weights("secureml-mnist", build_network("tenseal-mnist"), tmp_path)
    meta = save_weights("tenseal-mnist", build_network("tenseal-mnist"), tmp_path, seed=0, epochs=0)
    data = (tmp_path / "tenseal-mnist.npz").read_bytes()
    assert meta["sha256"] == hashlib.sha256(data).hexdigest() == json.loads(
        (tmp_path / "tenseal-mnist.json").read_text())["sha256"]


def test_train_tiny_is_deterministic_and_restores_state():
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    state = torch.get_rng_state()
    runs = [train_network("tenseal-mnist", epochs=1, seed=5, progress=False, limit=128) for _ in range(2)]
    assert graph_bytes(compile_model(runs[0][0])) == graph_bytes(compile_model(runs[1][0]))
    assert 0.0 <= runs[0][1] <= 1.0
    assert torch.get_num_threads() == threads and torch.are_deterministic_algorithms_enabled() == det
    assert torch.equal(torch.get_rng_state(), state)


# --- data ---------------------------------------------------------------------------------------

def test_digits():
    Xtr, ytr = load_digits_28("train")
    Xte, yte = load_digits_28("test")
    assert Xtr.shape == (1347, 1, 28, 28) and Xte.shape == (450, 1, 28, 28)
    assert Xtr.dtype == np.float32 and ytr.dtype == np.int64
    assert Xtr.min() >= 0.0 and Xtr.max() <= 1.0 and Xtr.max() > 0.9
    assert np.all(Xtr[:, :, :4] == 0) and np.all(Xtr[:, :, 24:] == 0)  # 20x20 box centered in 28x28
    assert set(np.bincount(yte)) <= {43, 44, 45, 46}  # stratified
    np.testing.assert_array_equal(load_digits_28("test")[0], Xte)
    X32, y32 = load_dataset("minionn-cifar", "test")
    assert X32.shape == (450, 3, 32, 32)
    np.testing.assert_array_equal(y32, yte)
    assert load_dataset("minionn-mnist", "test")[0].shape == Xte.shape
    for bad in (lambda: load_dataset("cifar10"), lambda: load_digits_28("validation")):
        with pytest.raises(ShapeError):
            bad()


idx_arrays = st.sampled_from(sorted(IDX_DTYPES)).flatmap(lambda code: hnp.arrays(
    IDX_DTYPES[code].newbyteorder("="), hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=5),
    elements={"allow_nan": False} if IDX_DTYPES[code].kind == "f" else None))


@given(arr=idx_arrays, compress=st.booleans())
@settings(max_examples=80, deadline=None)
def test_idx_roundtrip(arr, compress):
    data = write_idx(arr)
    if compress:
        data = gzip.compress(data, mtime=0)
    back = read_idx(data)
    assert back.dtype == arr.dtype.newbyteorder("=") and back.shape == arr.shape
    np.testing.assert_array_equal(back, arr)
    assert read_idx(io.BytesIO(data)).shape == arr.shape


@given(arr=idx_arrays, data=st.data())
@settings(max_examples=80, deadline=None)
def test_idx_truncated_or_padded(arr, data):
    raw = write_idx(arr)
    cut = data.draw(st.integers(0, len(raw) - 1))
    with pytest.raises(ShapeError):
        read_idx(raw[:cut])
    with pytest.raises(ShapeError):
        read_idx(raw + data.draw(st.binary(min_size=1, max_size=8)))


@given(b0=st.integers(0, 255), b1=st.integers(0, 255), code=st.integers(0, 255), ndim=st.integers(0, 255))
@settings(max_examples=120, deadline=None)
def test_idx_bad_magic(b0, b1, code, ndim):
    bad = b0 != 0 or b1 != 0 or code not in IDX_DTYPES or ndim == 0
    head = bytes([b0, b1, code, ndim]) + struct.pack(f">{ndim}I", *([1] * ndim))
    body = b"\x00" * (IDX_DTYPES.get(code, np.dtype("u1")).itemsize)
    if bad:
        with pytest.raises(ShapeError):
            read_idx(head + body)
    else:
        assert read_idx(head + body).shape == (1,) * ndim


@given(blob=st.binary(max_size=64), compress=st.booleans())
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_idx_garbage_only_raises_shape_error(blob, compress):
    for raw in (blob, gzip.compress(blob)[:len(blob) + 10] if compress else b"\x1f\x8b" + blob):
        try:
            read_idx(raw)
        except ShapeError:
            pass


def test_idx_huge_header_is_refused_without_allocating():
    with pytest.raises(ShapeError, match="limit"):
        read_idx(bytes([0, 0, 0x0E, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1))


def test_load_mnist_idx(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 7, dtype=np.uint8)
    (tmp_path / "img.gz").write_bytes(gzip.compress(write_idx(images)))
    (tmp_path / "lab").write_bytes(write_idx(labels))
    X, y = load_mnist_idx(tmp_path / "img.gz", str(tmp_path / "lab"))
    assert X.shape == (7, 1, 28, 28) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_allclose(X[:, 0] * 255, images, atol=1e-4)
    np.testing.assert_array_equal(y, labels)
    (tmp_path / "short").write_bytes(write_idx(labels[:6]))
    (tmp_path / "i32").write_bytes(write_idx(images.astype(np.int32)))
    (tmp_path / "small").write_bytes(write_idx(images[:, :20, :20]))
    for img, lab in (("img.gz", "short"), ("i32", "lab"), ("lab", "img.gz"), ("small", "lab")):
        with pytest.raises(ShapeError):
            load_mnist_idx(tmp_path / img, tmp_path / lab)
    assert load_mnist_idx(tmp_path / "small", tmp_path / "lab", image_size=None)[0].shape == (7, 1, 20, 20)
