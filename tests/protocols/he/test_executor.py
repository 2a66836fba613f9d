"""he batch packing's executor seam: a query larger than the slots is split into slot groups, evaluated
in this process or as Ray tasks (local Ray, 2 CPUs), and every logit matches the reference executor."""
import numpy as np
import pytest
import torch
from torch import nn

import privinfer
from privinfer.errors import ParameterError, ShapeError
from privinfer.model.reference import run_reference
from privinfer.model.torch_layers import Square
from privinfer.protocols.he import executor as hex_

TOL = 1e-2  # CKKS + flooding, logits of order 1 (same tolerance as tests/protocols/he/test_protocol.py)


def tiny_graph():
    torch.manual_seed(3)
    m = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), Square(), nn.Linear(6, 3))
    return privinfer.compile_model(m, input_shape=(1, 3, 4))


def test_group_split_is_exact():
    assert hex_.group_sizes(1, 4096) == [1]
    assert hex_.group_sizes(4096, 4096) == [4096]
    assert hex_.group_sizes(4097, 4096) == [4096, 1]
    g = tiny_graph()
    with pytest.raises(ShapeError, match="groups"):
        hex_.split_groups(g, [b""] * 12, 4097, 4096)  # two groups need 24 ciphertexts
    with pytest.raises(ShapeError, match="at most"):
        hex_.split_groups(g, [], 4096 * (hex_.MAX_GROUPS + 1), 4096)


def test_unknown_executor_is_refused():
    with pytest.raises(ParameterError, match="executor"):
        hex_.get_executor("spark://x")


def _two_groups(g, executor):
    # answers are checked to 1e-2, below the circuit-private flood: fast mode
    with privinfer.PrivateSession(g, "he", spawn="thread", packing="batch", executor=executor,
                                  circuit_privacy="fast") as s:
        slots = s.client.params.slots
        x = np.random.default_rng(5).random((slots + 3, *g.input_shape))
        got = s.infer(x)
    assert got.shape == (slots + 3, 3)
    assert np.abs(got - run_reference(g, x)).max() <= TOL
    return got


@pytest.mark.slow  # the Ray test below runs the same split/join code; this one needs no Ray
def test_local_executor_two_groups():
    _two_groups(tiny_graph(), "local")


@pytest.mark.slow  # 13 s: starts a local Ray cluster; the local pool runs the same groups in make test
def test_ray_executor_two_groups():
    ray = pytest.importorskip("ray")
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        ex = hex_.get_executor("ray")
        assert isinstance(ex, hex_.RayExecutor)
        _two_groups(tiny_graph(), ex)
    finally:
        if started:
            ray.shutdown()
