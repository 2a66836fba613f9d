"""Batch-packing parameters (privinfer.protocols.he.batch_params): a batch that fills whole slot groups gets a
chain without the output mask's bits (cryptonets-mnist at 4096 images: N=8192, not 16384), and a partial
last query under that chain is still masked and correct."""
from __future__ import annotations

import importlib

import numpy as np
import pytest

from privinfer.model.ir import Conv2d, Flatten, Graph, Linear, Poly
from privinfer.model.reference import run_reference

pytest.importorskip("tenseal")
B = importlib.import_module("privinfer.protocols.he.batch")
BP = importlib.import_module("privinfer.protocols.he.batch_params")
bp = importlib.import_module("privinfer.protocols.he.batch_plan")


def _net(seed: int) -> Graph:
    rng = np.random.default_rng(seed)
    return Graph((1, 6, 6), (Conv2d(rng.normal(0, 0.4, (3, 1, 3, 3)), rng.normal(0, 0.1, 3), stride=(1, 1)),
                             Poly((0.0, 0.0, 1.0)), Flatten(),
                             Linear(rng.normal(0, 0.2, (8, 48)), rng.normal(0, 0.1, 8)), Poly((0.0, 0.0, 1.0)),
                             Linear(rng.normal(0, 0.3, (4, 8)), rng.normal(0, 0.1, 4))))


def test_cryptonets_batch_4096_fits_n8192():
    from privinfer import zoo
    from privinfer.protocols.he.params import select_params
    g = zoo.load_model("cryptonets-mnist")
    full = select_params(g, "batch", batch=4096)
    assert full.N == 8192 and full.slots == 4096
    # a chain that must hold the mask (a partial group) is the larger ring, as before
    assert select_params(g, "batch", batch=100).N == 16384
    # the full-group chain still leaves a partial last query enough precision, under the sound bounds
    st = bp.normalize(g)
    bp.set_bounds(st, 1.0)
    primes = BP.primes_of(full.N, list(full.coeff_mod_bit_sizes))
    masked = bp.plan_scales(st, primes, len(primes), full.scale_bits, full.N, BP.MASK_BITS, cost_pass=False)
    assert masked.precision_bits >= BP.MIN_MASKED_BITS


def test_partial_query_under_full_group_params_is_masked_and_correct():
    g = _net(0)
    p = BP.suggest_params(g, 8192, full_groups=True)
    assert p == BP.suggest_params(g, 8192, full_groups=True)  # cached
    ctx = B.make_context(8192, p["coeff_bits"], p["scale_bits"])
    pub = B.public_copy(ctx)
    rng = np.random.default_rng(1)
    slots = 4096
    x = rng.uniform(0, 1, (slots, 1, 6, 6))
    ref = run_reference(g, x)
    tol = 2.0 ** -6 * max(1.0, float(np.abs(ref).max()))
    stats: dict = {}
    full = B.client_decrypt(ctx, B.server_evaluate(pub, g, B.client_encrypt(ctx, x), slots, mask_unused=True,
                                                   stats=stats), slots, 4)
    assert stats["plan"]["precision_bits"] >= BP.ENOUGH_BITS - 4
    assert np.abs(full - ref).max() <= tol
    out = B.server_evaluate(pub, g, B.client_encrypt(ctx, x[:5]), 5, mask_unused=True)
    every = B.client_decrypt(ctx, out, slots, 4)
    assert np.abs(every[:5] - ref[:5]).max() <= tol
    assert np.abs(every[5:]).max() < 1e-2  # the slots past the 5 images paid for hold no answer
