"""Exact integer linear maps on RNS residues: the batch engine's linear layers (Conv2d, Linear, AvgPool2d)
without a single SEAL call.

Why: a layer of integer weights (round(w * rho), `batch_plan`) applied to ciphertexts in NTT form is, per
RNS prime q, `sum_j w_j * c_j mod q` coefficient-wise -- the same arithmetic as SEAL's multiply_plain with a
constant, but one integer matrix product per prime for the whole layer. BLAS runs it exactly in float64 once
the residues are cut into limbs of b bits (every partial sum stays below 2^53). See `batch_rns` for the
residue access and `batch.py` for the engine.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ...errors import ParameterError


# ---------------------------------------------------------------------------------------------
# exact integer linear maps on residues
# ---------------------------------------------------------------------------------------------
@dataclass
class IntLinear:
    """y = W x + bias as an exact integer map, W given as blocks that partition the outputs.

    blocks: list of (out_rows, in_sel, Wf) where out_rows is a slice of the *block-ordered* output,
    in_sel a slice or index array of inputs and Wf a float64 integer-valued matrix. `perm[k]` is the true
    output index of block-ordered row k. `l1` bounds sum_j |W_ij| over any row.
    """
    n_in: int
    n_out: int
    blocks: list
    perm: np.ndarray
    l1: float
    bias: np.ndarray  # (n_out,) object array of Python ints (already multiplied by the output scale)
    pool: tuple | None = None  # (C, H, W, kh, kw, sh, sw, ph, pw, OH, OW): all-ones average-pool sum


def limb_bits(l1: float) -> int:
    """Largest limb width b such that every partial sum sum_j |w_j| * (2^b - 1) stays below 2^53."""
    return int(np.floor(53 - np.log2(max(l1, 1.0)) - 1e-9))


# rows per chunk in the elementwise passes: keeps every temporary inside L2. Not smaller: with two threads,
# every numpy call hands the GIL over, and 32-row chunks (4x the calls) made the conv ~30% slower on 2
# threads although ~15% faster on one (measured on cryptonets-mnist)
_ROWS = 128


def _reduce_into(out: np.ndarray, G: np.ndarray, t_count: int, b: int, dblk: int, q: int,
                 bias: np.ndarray | None, g_bound: float | None = None) -> None:
    """out = (sum_t G[:, t*dblk:(t+1)*dblk] * 2^(b t) + bias) mod q, exactly.

    The G blocks hold exact integers (|.| < 2^53). A = the sum mod 2^64 (wrapping int64 arithmetic),
    F = sum / q in float64 (absolute error about 2^(1-b) for limb width b, a small fraction of the one unit the fix-up below absorbs;
    2^-20 only for wide limbs), Q = floor(F) is floor(sum / q)
    except in rare near-integer cases off by one, so A - Q q is the true remainder, or in rare cases
    off by +-q: those few entries are found with one comparison and fixed.

    `g_bound`, when given, bounds |G| (l1 * (2^b - 1)). If it is below q/4, limb 0's share of the quotient
    (|G_0| / q < 1/4) is left out of F: Q is then still within one of the true quotient, which the same
    fix-up absorbs, and two of the ~12 elementwise passes are saved. All temporaries are per-thread
    scratch arrays and A is computed in `out` itself (no allocation, no final copy)."""
    inv_q = 1.0 / q
    qi = np.int64(q)
    qu = np.uint64(q)
    skip0 = t_count > 1 and g_bound is not None and g_bound < q / 4
    rows_max = min(_ROWS, G.shape[0])
    tmp_all = _scratch("red_tmp", (rows_max, dblk), np.int64)
    F_all = _scratch("red_F", (rows_max, dblk), np.float64)
    Ft_all = _scratch("red_Ft", (rows_max, dblk), np.float64)
    for r0 in range(0, G.shape[0], _ROWS):
        r1 = min(G.shape[0], r0 + _ROWS)
        k = r1 - r0
        tmp, F, Ft = tmp_all[:k], F_all[:k], Ft_all[:k]
        Au = out[r0:r1]
        A = Au.view(np.int64)
        g0 = G[r0:r1, :dblk]
        np.copyto(A, g0, casting="unsafe")
        if not skip0:
            np.multiply(g0, inv_q, out=F)
        for t in range(1, t_count):
            gt = G[r0:r1, t * dblk:(t + 1) * dblk]
            np.copyto(tmp, gt, casting="unsafe")
            np.left_shift(tmp, b * t, out=tmp)  # wraps: exact mod 2^64
            A += tmp
            if skip0 and t == 1:
                np.multiply(gt, float(2 ** (b * t)) * inv_q, out=F)
            else:
                np.multiply(gt, float(2 ** (b * t)) * inv_q, out=Ft)
                F += Ft
        if bias is not None:
            bb = bias[r0:r1]
            A += bb.astype(np.int64)[:, None]
            F += (bb.astype(np.float64) * inv_q)[:, None]
        np.floor(F, out=F)
        np.copyto(tmp, F, casting="unsafe")
        tmp *= qi
        A -= tmp
        if Au.max() >= qu:  # some entry off by +-q (negatives read as huge unsigned values)
            idx = np.nonzero(Au >= qu)
            v = A[idx]
            A[idx] = np.where(v < 0, v + qi, v - qi)


def _split_limbs(X: np.ndarray, t_count: int, b: int, dest: np.ndarray) -> None:
    """dest[:, t*d:(t+1)*d] = float((X >> b t) & (2^b - 1)) for each limb t (X: uint64 (rows, d)).

    Residues are below q < 2^61 (`batch_rns.get_kit` refuses wider primes; SEAL checks every loaded
    coefficient), so the work runs on int64 views: numpy converts int64 to float64 faster than uint64
    (10 vs 18 us per 32k values in cache; the whole pass, bound by reading X from memory, gains ~5%)."""
    d = X.shape[1]
    mask = np.int64((1 << b) - 1)
    for r0 in range(0, X.shape[0], _ROWS):
        r1 = min(X.shape[0], r0 + _ROWS)
        x = X[r0:r1].view(np.int64)
        if t_count == 1:
            np.copyto(dest[r0:r1, :d], x, casting="unsafe")
            continue
        tmp = _scratch("split_tmp", x.shape, np.int64)
        for t in range(t_count):
            if t == 0:
                np.bitwise_and(x, mask, out=tmp)
            else:
                np.right_shift(x, b * t, out=tmp)
                if t < t_count - 1:
                    np.bitwise_and(tmp, mask, out=tmp)
            np.copyto(dest[r0:r1, t * d:(t + 1) * d], tmp, casting="unsafe")


def _pool_sum(X: np.ndarray, pool: tuple, q: int) -> np.ndarray:
    """All-ones average-pool window sums of residues, reduced mod q (window size * q < 2^64)."""
    C, H, W, kh, kw, sh, sw, ph, pw, OH, OW = pool
    d = X.shape[1]
    x = X.reshape(C, H, W, d)
    if ph or pw:
        xp = np.zeros((C, H + 2 * ph, W + 2 * pw, d), dtype=np.uint64)
        xp[:, ph:ph + H, pw:pw + W] = x
        x = xp
    acc = np.zeros((C, OH, OW, d), dtype=np.uint64)
    for ky in range(kh):
        for kx in range(kw):
            acc += x[:, ky:ky + sh * (OH - 1) + 1:sh, kx:kx + sw * (OW - 1) + 1:sw]
    acc = acc.reshape(C * OH * OW, d)
    # acc < kh*kw*q: subtract floor(acc/q)*q with a float quotient (error at most one step), then fix up
    Q = np.floor(acc.astype(np.float64) * (1.0 / q)).astype(np.uint64)
    A = (acc - Q * np.uint64(q)).view(np.int64)
    A += (A >> 63) & np.int64(q)
    A -= np.where(A >= q, np.int64(q), np.int64(0))
    return A.view(np.uint64)


def apply_linear(op: IntLinear, X: np.ndarray, primes: list, size: int, n: int, threads: int = 2,
                 col_block: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
    """Apply an IntLinear to a ciphertext tensor X (L, n_in, size*N) -> (L, n_out, size*N).

    The bias goes into polynomial 0 only (a constant plaintext in NTT form is the constant everywhere).
    Work is split into (prime, column block) tasks run on `threads` threads; numpy and BLAS release the GIL.
    """
    L, n_in, D = X.shape
    if n_in != op.n_in:
        raise ParameterError(f"linear map expects {op.n_in} inputs, got {n_in}")
    if out is None:
        out = np.empty((L, op.n_out, D), dtype=np.uint64)
    elif out.shape != (L, op.n_out, D) or out.dtype != np.uint64:
        raise ParameterError(f"output array {out.shape} does not fit {(L, op.n_out, D)}")
    bias_res = []
    for q in primes[:L]:
        if op.bias is None:
            bias_res.append(None)
        else:
            r = np.array([int(v) % q for v in op.bias[op.perm]], dtype=np.uint64)
            bias_res.append(r if r.any() else None)
    tasks = []
    if op.pool is not None:
        cb = col_block or 2048
        for li in range(L):
            for c0 in range(0, D, cb):
                tasks.append((li, c0, min(D, c0 + cb)))

        def run(task):
            li, c0, c1 = task
            q = primes[li]
            res = _pool_sum(X[li, :, c0:c1], op.pool, q)
            br = bias_res[li]
            if br is not None and c0 < n:  # pooling has no bias; kept for symmetry
                raise ParameterError("average pooling has no bias")
            out[li, :, c0:c1] = res
    else:
        b_max = limb_bits(op.l1)
        if b_max < 8:
            raise ParameterError(f"integer weights too large for exact float64 products (row L1 {op.l1:.3g})")
        tcounts = [max(1, -(-q.bit_length() // b_max)) for q in primes[:L]]
        bits = [-(-q.bit_length() // t) for q, t in zip(primes[:L], tcounts)]  # even limbs, each <= b_max
        # columns per task: keep the limb matrix near 16 MB and a column block inside one polynomial
        target = col_block or max(256, min(n, int(16e6 / (8 * max(n_in, 1) * max(tcounts)))))
        cb = 1 << int(np.floor(np.log2(target)))
        cb = min(cb, n)
        for li in range(L):
            for c0 in range(0, D, cb):
                tasks.append((li, c0, min(D, c0 + cb)))
        inv_perm_needed = not np.array_equal(op.perm, np.arange(op.n_out))
        # the gathers below run with mode="clip" (no defensive copies), which would clamp a stray index
        # silently: refuse any out of range here, once per call
        for _, insel, _ in op.blocks:
            if not isinstance(insel, slice) and len(insel) and (int(np.min(insel)) < 0 or int(np.max(insel)) >= n_in):
                raise ParameterError(f"linear map block reads inputs outside 0..{n_in - 1}")

        def run(task):
            li, c0, c1 = task
            q, T, b = primes[li], tcounts[li], bits[li]
            d = c1 - c0
            Xs = _scratch("Xs", (n_in, T * d), np.float64)
            _split_limbs(X[li, :, c0:c1], T, b, Xs)
            G = _scratch("G", (op.n_out, T * d), np.float64)
            for rows, insel, Wf in op.blocks:
                if isinstance(insel, slice):
                    np.matmul(Wf, Xs[insel], out=G[rows])
                else:
                    src = _scratch("take", (len(insel), T * d), np.float64)
                    # mode="clip": with the default "raise" and out=, numpy copies `out` first and writes it
                    # back afterwards (two extra passes over src); insel is built in range by conv_blocks
                    np.take(Xs, insel, axis=0, out=src, mode="clip")
                    np.matmul(Wf, src, out=G[rows])
            br = bias_res[li] if c0 < n else None  # bias only on polynomial 0 (columns [0, N))
            res = out[li, :, c0:c1] if not inv_perm_needed else _scratch("res", (op.n_out, d), np.uint64)
            _reduce_into(res, G, T, b, d, q, br, g_bound=op.l1 * float((1 << b) - 1))
            if not inv_perm_needed:
                return
            out[li, op.perm, c0:c1] = res
    run_tasks(run, tasks, threads)
    return out


_tls = threading.local()
_executors: dict = {}
_exec_lock = threading.Lock()


def _scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """A per-thread reusable work array (fresh large allocations cost page faults every time)."""
    cache = getattr(_tls, "arrays", None)
    if cache is None:
        cache = _tls.arrays = {}
    size = int(np.prod(shape))
    buf = cache.get((name, np.dtype(dtype).str))
    if buf is None or buf.size < size:
        buf = cache[(name, np.dtype(dtype).str)] = np.empty(size, dtype=dtype)
    return buf[:size].reshape(shape)


def run_tasks(fn, tasks, threads: int) -> None:
    """Run fn over tasks on `threads` long-lived threads, BLAS pinned to one thread each (OpenBLAS's own
    threads spin-wait and collapse on small products or a busy machine)."""
    with _blas_single_thread():
        if threads <= 1 or len(tasks) <= 1:
            for t in tasks:
                fn(t)
            return
        with _exec_lock:
            ex = _executors.get(threads)
            if ex is None:
                ex = _executors[threads] = ThreadPoolExecutor(threads, thread_name_prefix="pi-he-batch")
        for f in [ex.submit(fn, t) for t in tasks]:
            f.result()


class _blas_single_thread:
    """Limit BLAS to one thread while our own threads split the work (restored afterwards)."""

    def __enter__(self):
        try:
            from threadpoolctl import threadpool_limits
            self._ctl = threadpool_limits(limits=1, user_api="blas")
        except Exception:  # pragma: no cover - threadpoolctl missing: BLAS oversubscribes, still correct
            self._ctl = None
        return self

    def __exit__(self, *exc):
        if self._ctl is not None:
            self._ctl.restore_original_limits()
        return False
