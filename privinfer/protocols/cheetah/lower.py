"""Lower privinfer's layer IR (its public JSON spec) to a JAX function that SPU compiles for CHEETAH.

Why here and why from the spec: the SPU parties run under their own interpreter and cannot import the
`privinfer` package (torch), so they rebuild the network from `Graph.spec()`, the public architecture that
both parties already hold. The weights are separate arguments, so the same function (and the same SPU
executable) is built by the server, which owns them, and by the client, which never sees them.

Semantics follow `privinfer.model.reference`: NCHW tensors, conv padding (top, bottom, left, right), average
pooling counts zero padding, max pooling has none, `flatten` is row-major, `poly` is sum_i c_i x^i.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("conv2d", "linear", "avgpool2d", "maxpool2d", "relu", "poly", "flatten")


def param_names(spec: dict) -> list[str]:
    """Names of the weight arrays, in argument order (same keys as `Graph.arrays()`)."""
    return [f"{i}.{k}" for i, l in enumerate(spec["layers"]) if l["kind"] in ("conv2d", "linear")
            for k in ("weight", "bias")]


def param_shapes(spec: dict) -> list[tuple[int, ...]]:
    out = []
    for l in spec["layers"]:
        if l["kind"] == "conv2d":
            out += [(l["out_channels"], l["in_channels"], *l["kernel"]), (l["out_channels"],)]
        elif l["kind"] == "linear":
            out += [(l["out_features"], l["in_features"]), (l["out_features"],)]
    return [tuple(int(v) for v in s) for s in out]


def build(spec: dict):
    """f(params, x) -> logits, for `params` in `param_names(spec)` order and x of shape (B, *input)."""
    layers = spec["layers"]
    bad = sorted({l["kind"] for l in layers} - set(KINDS))
    if bad:
        raise ValueError(f"cannot lower layer kinds {bad}")

    def f(params, x):
        it = iter(params)
        for l in layers:
            k = l["kind"]
            if k == "conv2d":
                w, b = next(it), next(it)
                t, bo, le, r = l["padding"]
                x = jax.lax.conv_general_dilated(x, w, tuple(l["stride"]), ((t, bo), (le, r)),
                                                 dimension_numbers=("NCHW", "OIHW", "NCHW"))
                x = x + b.reshape(1, -1, 1, 1)
            elif k == "linear":
                w, b = next(it), next(it)
                x = x @ w.T + b
            elif k == "avgpool2d":
                (kh, kw), (sh, sw), (ph, pw) = l["kernel"], l["stride"], l["padding"]
                s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 1, kh, kw), (1, 1, sh, sw),
                                          ((0, 0), (0, 0), (ph, ph), (pw, pw)))
                x = s * (1.0 / (kh * kw))
            elif k == "maxpool2d":
                (kh, kw), (sh, sw) = l["kernel"], l["stride"]
                x = jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 1, kh, kw), (1, 1, sh, sw), "VALID")
            elif k == "relu":
                x = jnp.maximum(x, 0.0)
            elif k == "poly":
                c = [float(v) for v in l["coeffs"]]
                acc = jnp.full_like(x, c[-1])
                for v in reversed(c[:-1]):  # Horner: degree-1 multiplications
                    acc = acc * x + v
                x = acc
            elif k == "flatten":
                x = x.reshape(x.shape[0], -1)
        return x

    return f


def example_args(spec: dict, batch: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Zero arrays of the right shapes (SPU compiles on shapes; the values do not matter)."""
    return ([np.zeros(s) for s in param_shapes(spec)],
            np.zeros((batch, *[int(v) for v in spec["input_shape"]])))
