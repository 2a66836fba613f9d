"""Where `he` batch packing evaluates: in this process, or fanned out over a Ray cluster.

Why a seam: one batch-packed query holds `groups = ceil(batch / slots)` independent ciphertext groups (one
ciphertext per input position each, image i of the group in slot i). Groups share nothing but the
session's public context (public + relinearization keys) and the model, so they are embarrassingly
parallel. An executor takes a session's public context once (`open`) and then evaluates the groups of
each query (`evaluate`); the protocol (`he/sides.py`, a connection's server side) only calls these two
methods.

* `LocalExecutor`: the groups one after another in this process, each with the batch engine's own
  parallelism (`threads`: numpy threads, plus its SEAL helper process with 2+).
* `RayExecutor`: one Ray task per group. `open` puts the session's public context and the graph into the
  object store once (`ray.put`); every task of every query of that session gets those references, and a
  Ray worker deserializes each context at most once (cached by the session's key). Results are gathered
  in group order. Ray is optional (`pip install 'privinfer[ray]'`); nothing here imports it unless asked.

Scaling model: a query of G groups on a cluster of C task slots takes about ceil(G / C) x (one group's
time at one core) + transfer (each group's ciphertexts cross the network once each way); see
/work/notes/serving.md for measured figures.
"""
from __future__ import annotations

import importlib
import math
import secrets
from typing import Any

from ...errors import ParameterError, ShapeError

MAX_GROUPS = 16  # slot groups per query: with 1 GiB frames and ~250 KB ciphertexts, more would not fit anyway


def _batch():
    return importlib.import_module("privinfer.protocols.he.batch")


def n_groups(batch: int, slots: int) -> int:
    return max(1, math.ceil(int(batch) / int(slots)))


def group_sizes(batch: int, slots: int) -> list[int]:
    g = n_groups(batch, slots)
    return [min(slots, batch - k * slots) for k in range(g)]


# ---------------------------------------------------------------------------------------------
# client side: split a large batch into slot groups and join the results
# ---------------------------------------------------------------------------------------------
def encrypt_groups(context, x, slots: int) -> list[bytes]:
    """Encrypt (B, *shape) as ceil(B / slots) groups, concatenated: group k holds images k*slots... ."""
    b = _batch()
    out: list[bytes] = []
    for k in range(n_groups(x.shape[0], slots)):
        out += b.client_encrypt(context, x[k * slots:(k + 1) * slots])
    return out


def decrypt_groups(context, blobs: list[bytes], batch: int, out_dim: int, slots: int):
    import numpy as np
    sizes = group_sizes(batch, slots)
    if len(blobs) != len(sizes) * out_dim:
        raise ShapeError(f"expected {len(sizes)} x {out_dim} result ciphertexts, got {len(blobs)}")
    b = _batch()
    return np.concatenate([b.client_decrypt(context, blobs[k * out_dim:(k + 1) * out_dim], n, out_dim)
                           for k, n in enumerate(sizes)])


def split_groups(graph, blobs: list[bytes], batch: int, slots: int) -> list[tuple[list[bytes], int]]:
    """Server side: (ciphertexts, images) per group, checking the count against the batch."""
    import numpy as np
    n_in = int(np.prod(graph.input_shape))
    sizes = group_sizes(batch, slots)
    if len(sizes) > MAX_GROUPS:
        raise ShapeError(f"batch {batch} needs {len(sizes)} slot groups; at most {MAX_GROUPS} per query")
    if len(blobs) != len(sizes) * n_in:
        raise ShapeError(f"expected {len(sizes)} groups x {n_in} input ciphertexts for batch {batch}, got {len(blobs)}")
    return [(blobs[k * n_in:(k + 1) * n_in], n) for k, n in enumerate(sizes)]


# ---------------------------------------------------------------------------------------------
# executors
# ---------------------------------------------------------------------------------------------
class LocalExecutor:
    name = "local"

    def __init__(self, threads: int | None = None):
        self.threads = threads

    def open(self, public_context) -> "LocalJob":
        return LocalJob(self, public_context)

    def close(self) -> None:
        pass


class LocalJob:
    def __init__(self, ex: LocalExecutor, ctx):
        self.ex, self.ctx = ex, ctx

    def evaluate(self, graph, blobs: list[bytes], batch: int, slots: int, **kw) -> list[bytes]:
        b = _batch()
        out: list[bytes] = []
        if hasattr(blobs, "take"):  # a batch_stream.ChunkReader: each group is evaluated as its pieces arrive
            import numpy as np
            n_in, sizes = int(np.prod(graph.input_shape)), group_sizes(batch, slots)
            if len(sizes) > MAX_GROUPS or blobs.total != len(sizes) * n_in:
                raise ShapeError(f"batch {batch} needs {len(sizes)} slot groups of {n_in} ciphertexts (at most "
                                 f"{MAX_GROUPS} groups); the query announced {blobs.total}")
            for n in sizes:
                out += b.server_evaluate(self.ctx, graph, blobs.take(n_in), n, threads=self.ex.threads, **kw)
            return out
        for cts, n in split_groups(graph, blobs, batch, slots):
            out += b.server_evaluate(self.ctx, graph, cts, n, threads=self.ex.threads, **kw)
        return out

    def close(self) -> None:
        self.ctx = None


def _ray():
    try:
        return importlib.import_module("ray")
    except ModuleNotFoundError:
        raise ParameterError("executor 'ray' needs Ray: pip install 'privinfer[ray]'") from None


_CACHE: dict[str, Any] = {}  # in a Ray worker: session key -> (context, graph); a few sessions at most


def _eval_group(key: str, ctx_bytes, graph_bytes, cts: list[bytes], n: int, threads: int, kw: dict) -> list[bytes]:
    """Body of one Ray task: one slot group through the batch engine, on `threads` cores."""
    import tenseal as ts
    from privinfer.model.ir import load_graph
    hit = _CACHE.get(key)
    if hit is None:
        while len(_CACHE) >= 4:
            _CACHE.pop(next(iter(_CACHE)))
        hit = _CACHE[key] = (ts.context_from(bytes(ctx_bytes)), load_graph(bytes(graph_bytes)))
    ctx, graph = hit
    return _batch().server_evaluate(ctx, graph, cts, n, threads=threads, **kw)


class RayExecutor:
    """Fan slot groups out as Ray tasks. `address`: None (use the running Ray, or start a local one),
    "auto", "ray://HOST:PORT" (Ray client: needs `ray[client]`) or a cluster's "HOST:PORT".
    `threads`: cores per task (the task's `num_cpus`); 1 lets Ray place one group per core."""
    name = "ray"

    def __init__(self, address: str | None = None, *, threads: int = 1, **init_kw):
        self.ray = _ray()
        if not self.ray.is_initialized():
            try:
                self.ray.init(address=address, ignore_reinit_error=True, log_to_driver=False, **init_kw)
            except Exception as e:  # ConnectionError, ValueError, RuntimeError on a bad address
                raise ParameterError(f"cannot start or reach Ray at {address or 'local'}: {e}") from None
        self.threads = int(threads)
        self._task = self.ray.remote(num_cpus=self.threads, max_retries=1)(_eval_group)

    def open(self, public_context) -> "RayJob":
        return RayJob(self, public_context)

    def close(self) -> None:
        pass


class RayJob:
    def __init__(self, ex: RayExecutor, ctx):
        self.ex, self.ray = ex, ex.ray
        blob = ctx.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False,
                             save_relin_keys=True)
        self.key = secrets.token_hex(8)
        self.ctx_ref = self.ray.put(blob)  # the evaluation keys: once per session
        self._graph_refs: dict[int, Any] = {}

    def _graph_ref(self, graph):
        ref = self._graph_refs.get(id(graph))
        if ref is None:
            from ...model.ir import graph_to_bytes
            ref = self._graph_refs[id(graph)] = self.ray.put(graph_to_bytes(graph))
        return ref

    def evaluate(self, graph, blobs: list[bytes], batch: int, slots: int, **kw) -> list[bytes]:
        if hasattr(blobs, "all"):  # a batch_stream.ChunkReader: Ray tasks take whole groups
            blobs = blobs.all()
        groups = split_groups(graph, blobs, batch, slots)
        g = self._graph_ref(graph)
        refs = [self.ex._task.remote(self.key, self.ctx_ref, g, cts, n, self.ex.threads, kw) for cts, n in groups]
        try:
            parts = self.ray.get(refs)
        except Exception as e:
            cause = getattr(e, "cause", None)
            if isinstance(cause, Exception) and cause.__class__.__module__.startswith("privinfer"):
                raise cause from None  # the engine's own typed error (bad ciphertext, shape)
            raise ParameterError(f"Ray evaluation failed: {type(e).__name__}: {str(e)[:500]}") from None
        return [c for part in parts for c in part]

    def close(self) -> None:
        self.ctx_ref = None
        self._graph_refs.clear()


def get_executor(spec) -> Any:
    """An executor from a server option: None / "local", "ray", "ray://HOST:PORT", "HOST:PORT" after
    "ray:" (e.g. "ray:10.0.0.5:6379"), or an executor object (anything with `open(ctx)`)."""
    if spec is None or spec == "local":
        return LocalExecutor()
    if hasattr(spec, "open"):
        return spec
    if isinstance(spec, str):
        if spec == "ray":
            return RayExecutor()
        if spec.startswith("ray://"):
            return RayExecutor(spec)
        if spec.startswith("ray:"):
            return RayExecutor(spec[4:])
    raise ParameterError(f"executor must be 'local', 'ray', 'ray://HOST:PORT' or 'ray:HOST:PORT', got {spec!r}")
