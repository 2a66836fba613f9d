"""CryptoNets-style batch packing on CKKS: one image per slot, one ciphertext per pixel, no rotations.

With N = 8192 a ciphertext has 4096 slots, so one query carries up to 4096 images (N = 16384: 8192). The
client encrypts input position p of every image into ciphertext p (slot i = image i). The server then
evaluates the network unit by unit: a linear layer is a sum of ciphertext x scalar products, a Poly layer
is ciphertext x ciphertext products, and nothing ever moves between slots, so no Galois keys are needed.

How it is fast (cryptonets-mnist needs ~107k ciphertext x scalar products per query; as SEAL calls at
~110 us each that is ~12 s of one core):

* Linear layers (Conv2d, Linear, AvgPool2d) never call SEAL. Weights are quantized to integers
  round(w * rho), the scale is multiplied by rho, and the layer becomes an exact integer matrix product
  on the RNS residues of all ciphertexts at once (float64 BLAS on limbs, see `batch_rns`). No rescale is
  spent on them. Zero padding costs nothing: padded positions are simply absent from the products.
* SEAL does only what needs NTTs or keys, once per unit: squares/products of Poly layers, rescales,
  relinearization, the outputs' re-randomization. A square's 3-part result feeds the next linear layer
  as is; it is relinearized only before another product (at the lowest level where the key-switching
  noise stays far below the scale) or at the outputs.
* A planner (`batch_plan`) picks every rho and where to rescale (which primes to drop before which
  square: a prime dropped before a square frees twice its bits) by a small MILP: most weight precision
  under overflow bounds, then least estimated CPU time (limb counts, rescales) at >= 16 bits.
* Both cores: numpy and BLAS release the GIL, so linear layers run on threads; TenSEAL's SEAL bindings
  hold it (`benchmarks/he_batch.py` measures this), so the per-unit SEAL loops are split with a helper
  process (`batch_par`) working on shared tmpfs arrays. Large arrays come from a pool kept between
  queries: fresh mappings cost ~0.5 s of page faults per GB.

Wire format: one SEAL-serialized ciphertext per input position / output logit. The client encrypts with
the secret key and a PRNG seed (`Encryptor.encrypt_symmetric` -> seeded `Serializable`), which halves the
upload: the server expands the uniform half from the seed (~0.7 ms per ciphertext). Outputs are
relinearized to size 2, switched down to the last prime (smallest download) and re-randomized by adding a
fresh public-key encryption of zero, so the client never sees the server's ciphertext components (which
are functions of the weights).

Unused slots (index >= batch) are not masked by default: every slot of every ciphertext is the client's
own input, so the values there are the model applied to inputs the client chose (zeros from an honest
client) and reveal nothing that a query with those inputs would not. What the server gives per query is
`slots` predictions whatever `batch` says, so per-image accounting (rate limits, budgets) must count
`slots` -- or pass `mask_unused=True`, which multiplies the outputs by a 0/1 plaintext (costs ~24 bits of
scale budget, planned like any other multiplication).

Limits: CKKS results are approximate and the decrypted values carry the server's computation noise (a
fresh encryption of zero re-randomizes the ciphertext but does not flood that noise; full circuit privacy
would need noise flooding at a precision cost). Bounds that guarantee no overflow are interval bounds for
inputs with |x| <= `input_bound` (default 1, images in [0, 1]); larger inputs may wrap around silently.
The raw residue access relies on TenSEAL 0.3.18's memory layout, checked on every use (`batch_rns`).
"""
from __future__ import annotations

import hashlib
import itertools
import math
import os
import threading
import time
import weakref

import numpy as np

from ...errors import ParameterError, ProtocolError, ShapeError
from ...model.ir import Graph
from . import batch_helper as bhelp
from . import batch_par as bpar
from . import batch_runner as brun
from . import batch_plan as bp
from . import batch_stream as bstream
from .batch_params import (ENOUGH_BITS, MASK_BITS, MIN_PRECISION_BITS, depth, make_context,  # noqa: F401
                           public_copy, suggest_params)
from .batch_params import primes_of as _primes  # noqa: F401 (tests)
from . import batch_rns as rns
from .batch_rns import seal, ts  # noqa: F401 (ts: re-exported)



# ---------------------------------------------------------------------------------------------
# public interface
# ---------------------------------------------------------------------------------------------
def rotation_steps(graph: Graph) -> list[int]:
    """Galois steps needed: none, nothing moves between slots."""
    bp.normalize(graph)  # still refuse graphs we cannot run
    return []


def client_encrypt(context, x: np.ndarray) -> list[bytes]:
    """Encrypt a batch (B, *input_shape): one ciphertext per input position, image i in slot i.

    Uses seeded symmetric encryption when the context holds the secret key (half the upload), else
    public-key encryption. The scale is the context's global scale. (`batch_stream` sends it in chunks.)
    """
    kit = rns.get_kit(context)
    flat = bstream.check_batch(x)
    _global_scale(context)
    return bstream.encrypt_positions(context, flat, 0, flat.shape[1])


def server_evaluate(public_context, graph: Graph, blobs: list[bytes], batch: int, *,
                    input_bound: float = 1.0, calibration: np.ndarray | None = None, mask_unused: bool = False,
                    threads: int | None = None, stats: dict | None = None,
                    force_drops: list[int] | None = None) -> list[bytes]:
    """Evaluate `graph` on the client's ciphertexts; one re-randomized ciphertext per output logit.

    `input_bound`: inputs are assumed in [-input_bound, input_bound] for the overflow bounds (interval
    arithmetic: guaranteed, pessimistic). `calibration` (B, *input_shape): use 4x the largest values seen
    on these inputs instead (more precision for trained networks, no guarantee).
    `threads`: cores to use (default: all): numpy threads, and with 2+ the SEAL helper process for the
    per-unit loops.
    `stats`, when given, receives the plan and per-phase timings (seconds). `force_drops` pins the
    rescale placement (experiments only).
    """
    t_all = time.perf_counter()
    timings: dict = {}
    threads = int(threads) if threads else (os.cpu_count() or 2)
    kit = rns.get_kit(public_context)
    if kit.pk_encryptor is None:
        raise ParameterError("the server context needs the public key (for re-randomization)")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 1 <= int(batch) <= kit.slots:
        raise ShapeError(f"batch must be an integer in [1, {kit.slots}], got {batch!r}")
    batch = int(batch)
    prep = _prepared(graph, float(input_bound), calibration)
    stages = prep.stages
    n_in = int(np.prod(graph.input_shape))
    if isinstance(blobs, (list, tuple)):
        if len(blobs) != n_in:
            raise ShapeError(f"expected {n_in} input ciphertexts (one per input position), got {len(blobs)}")
        pieces = iter([list(blobs)])
    elif hasattr(blobs, "__next__"):  # a stream of lists as they arrive (batch_stream.ChunkReader.take)
        pieces = blobs
    else:
        raise ShapeError(f"expected {n_in} input ciphertexts (one per input position), got {type(blobs).__name__}")
    first = next(pieces, None)
    if not first:
        raise ShapeError(f"expected {n_in} input ciphertexts (one per input position), got none")

    # the first input fixes the level and scale the plan starts from
    ct0 = rns.load_ciphertext(kit, first[0], "input ciphertext 0")
    if ct0.size() != 2:
        raise ProtocolError("input ciphertext 0 is not a fresh (2-part) ciphertext")
    pid, scale0, level = list(ct0.parms_id()), ct0.scale, kit.level_of(ct0)
    del ct0
    if level != kit.top_level:
        raise ProtocolError(f"input ciphertexts must be at the top level ({kit.top_level} primes), got {level}")
    if not 2.0 ** 10 <= scale0 < 2.0 ** (sum(math.log2(q) for q in kit.primes) - 10):
        raise ProtocolError(f"input scale 2^{math.log2(scale0):.1f} is outside the usable range")
    mask_bits = MASK_BITS if (mask_unused and batch < kit.slots) else 0.0
    plan = prep.plan(kit, level, scale0, mask_bits, force_drops)
    if plan.precision_bits < MIN_PRECISION_BITS and not force_drops:
        raise ParameterError(f"these CKKS parameters leave {plan.precision_bits:.1f} bits of weight precision "
                             f"(< {MIN_PRECISION_BITS}): the logits would be wrong; use a larger chain or N")
    if stats is not None:
        stats["plan"] = {"drops": plan.drops, "log_rho": plan.log_rho, "precision_bits": plan.precision_bits,
                         "level": level, "log2_input_scale": math.log2(scale0)}

    shared = bpar.SharedArrays()
    run = None
    try:
        run = brun.Runner(kit, bhelp.acquire_helper() if threads >= 2 else None, shared)
        used_helper = run.helper is not None
        n = kit.n
        cpu = brun.CpuClock(run.helper)
        # ---- load the inputs (rescaling them if planned) into residue arrays
        t0 = time.perf_counter()
        level -= plan.drops[0]
        X = run.alloc((level, n_in, 2, n))
        done = 0
        for piece in itertools.chain([first], pieces):  # loads each piece as it arrives
            if done + len(piece) > n_in:
                break
            S = run.load(piece, X, plan.drops[0], (pid, scale0), done)
            done += len(piece)
        if done != n_in:
            raise ShapeError(f"expected {n_in} input ciphertexts (one per input position), got more or fewer")
        size = 2
        timings["load_s"] = time.perf_counter() - t0
        cpu.lap("load", timings)

        # ---- the layers
        point = 0
        for i, st in enumerate(stages):
            t0 = time.perf_counter()
            if st.kind == "poly":
                point += 1
                Y, S = run.poly(X, S, plan.drops[point], st.coeffs, plan.poly_rho[i])
                shared.release(X)
                X = Y
                size, level = X.shape[2], X.shape[0]
                key_t = f"{i}:{st.name}:poly_s"
            else:
                rho = float(st.pool[0] * st.pool[1]) if st.kind == "pool" else 2.0 ** plan.log_rho[i]
                S_out = S * rho
                op = prep.operator(i, rho, S_out, kit.primes)
                Y = run.alloc((level, st.n_out, size, n))
                rns.apply_linear(op, X.reshape(level, st.n_in, size * n), kit.primes, size, n, threads,
                                 out=Y.reshape(level, st.n_out, size * n))
                shared.release(X)
                X, S = Y, S_out
                key_t = f"{i}:{st.name}:linear_s"
            timings[key_t] = time.perf_counter() - t0
            cpu.lap(key_t[:-2], timings)

        # ---- outputs
        t0 = time.perf_counter()
        out = _output_stage(kit, X, S, size, level, plan.drops[-1], batch if mask_bits else None)
        timings["output_s"] = time.perf_counter() - t0
        cpu.lap("output", timings)
    finally:
        shared.close()
        if run is not None:
            run.release()
    timings["total_s"] = time.perf_counter() - t_all
    timings["helper"] = used_helper
    if stats is not None:
        stats["timings"] = timings
    return out


def client_decrypt(context, blobs: list[bytes], batch: int, out_dim: int) -> np.ndarray:
    """Decrypt the server's logits into (batch, out_dim)."""
    kit = rns.get_kit(context)
    if kit.decryptor is None:
        raise ParameterError("decryption needs a context holding the secret key")
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or not 1 <= int(batch) <= kit.slots:
        raise ShapeError(f"batch must be an integer in [1, {kit.slots}], got {batch!r}")
    if not isinstance(blobs, (list, tuple)) or len(blobs) != int(out_dim):
        raise ShapeError(f"expected {out_dim} output ciphertexts, got "
                         f"{len(blobs) if isinstance(blobs, (list, tuple)) else type(blobs).__name__}")
    res = np.empty((int(batch), int(out_dim)))
    pt = seal.Plaintext()
    for k, blob in enumerate(blobs):
        ct = rns.load_ciphertext(kit, blob, f"output ciphertext {k}")
        try:
            kit.decryptor.decrypt(ct, pt)
            vals = kit.encoder.decode_double(pt)
        except Exception as e:
            raise ProtocolError(f"output ciphertext {k} does not decrypt: {e}") from None
        res[:, k] = np.asarray(vals[:batch])
    if not np.all(np.isfinite(res)):
        raise ProtocolError("decrypted outputs are not finite")
    return res


# ---------------------------------------------------------------------------------------------
# internals
# ---------------------------------------------------------------------------------------------
def _global_scale(context) -> float:
    try:
        s = float(context.global_scale)
    except Exception:
        raise ParameterError("the context has no global scale; set context.global_scale") from None
    if not np.isfinite(s) or s < 2.0 ** 10:
        raise ParameterError(f"global scale {s} is too small")
    return s


class _Prepared:
    """Per (graph, bounds): normalized stages and caches of plans and integer operators."""

    def __init__(self, graph: Graph, input_bound: float, calibration):
        self.stages = bp.normalize(graph)
        bp.set_bounds(self.stages, input_bound, calibration)
        self._plans: dict = {}
        self._ops: dict = {}
        self._lock = threading.Lock()

    def plan(self, kit, level: int, scale: float, mask_bits: float, force_drops=None) -> bp.Plan:
        key = (tuple(kit.primes), kit.n, level, scale, mask_bits, tuple(force_drops or ()))
        with self._lock:
            if key not in self._plans:
                self._plans[key] = bp.plan_scales(self.stages, kit.primes, level, math.log2(scale), kit.n,
                                                  mask_bits, force_drops)
                if len(self._plans) > 16:
                    self._plans.pop(next(iter(self._plans)))
            return self._plans[key]

    def operator(self, i: int, rho: float, out_scale: float, primes: list[int]) -> rns.IntLinear:
        key = (i, rho, out_scale, max(primes))
        with self._lock:
            op = self._ops.get(key)
            if op is None:
                op = bp.build_int_linear(self.stages[i], rho, out_scale, max(primes))
                self._ops[key] = op
                if len(self._ops) > 64:
                    self._ops.pop(next(iter(self._ops)))
            return op


_prep_cache: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_prep_lock = threading.Lock()


def _prepared(graph: Graph, input_bound: float, calibration=None) -> _Prepared:
    if calibration is not None:
        calibration = np.asarray(calibration, dtype=np.float64)
        if calibration.ndim != len(graph.input_shape) + 1 or calibration.shape[1:] != tuple(graph.input_shape) \
                or not np.all(np.isfinite(calibration)):
            raise ShapeError(f"calibration inputs must be finite, shaped (B, {graph.input_shape})")
        key = ("calibration", hashlib.sha256(calibration.tobytes()).hexdigest())
    else:
        if not (np.isfinite(input_bound) and input_bound > 0):
            raise ParameterError(f"input_bound must be positive, got {input_bound}")
        key = ("interval", input_bound)
    with _prep_lock:
        per = _prep_cache.setdefault(graph, {})
        p = per.get(key)
        if p is None:
            p = per[key] = _Prepared(graph, input_bound, calibration)
            while len(per) > 8:
                per.pop(next(iter(per)))
        return p


def _output_stage(kit, X: np.ndarray, S: float, size: int, level: int, drops: int, mask_batch):
    """Mask (optional), rescale as planned, drop to the last prime, relinearize, re-randomize, serialize."""
    ev = kit.evaluator
    buf = kit.buffer(level, size)
    if size > 2 and kit.relin_keys is None:
        raise ParameterError("the server context needs relinearization keys")
    mask_pt = None
    if mask_batch is not None:
        m = np.zeros(kit.slots)
        m[:mask_batch] = 1.0
        mask_pt = seal.Plaintext()
        kit.encoder.encode(m.tolist(), kit.parms_ids[level], 2.0 ** MASK_BITS, mask_pt)
    out = []
    for j in range(X.shape[1]):
        rns.write_ct(buf, X[:, j], S)
        cur = seal.Ciphertext(kit.sc)
        # every first step writes a fresh ciphertext, so buf stays reusable; relinearize first (at the
        # largest scale, where key-switching noise is negligible), then mask, rescale, drop primes
        if size > 2:
            ev.relinearize(buf, kit.relin_keys, cur)
        else:
            ev.negate(buf, cur)
            ev.negate_inplace(cur)
            cur.scale = buf.scale
        if mask_pt is not None:
            ev.multiply_plain_inplace(cur, mask_pt)
        for _ in range(drops):
            ev.rescale_to_next_inplace(cur)
        while kit.level_of(cur) > 1:
            ev.mod_switch_to_next_inplace(cur)
        z = seal.Ciphertext(kit.sc)
        kit.pk_encryptor.encrypt_zero(cur.parms_id(), z)
        z.scale = cur.scale
        ev.add_inplace(cur, z)
        out.append(rns.save_bytes(cur))
    return out
