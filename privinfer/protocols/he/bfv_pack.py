"""Lane packing for BFV segments: the client gathers (im2col), the server multiplies, rotates a few giant steps
and never folds: lanes are summed by the client after decryption, as shares.

Why not the CKKS packing plans (`latency.py`, `convpack.py`): they keep one output per slot, so a 16->16 5x5
convolution on 12x12 (1024 outputs in 4096 slots) costs 400 plaintext products and 39 rotations, and the
baby-step rotations before the products multiply key-switching error into the result (which the circuit-privacy
flood must then cover). A BFV segment's result is masked uniformly mod t in EVERY slot before it leaves the server
(`convert/bfv.py`), and shares add mod t: a result may therefore sit in L lanes of partial sums that the client
adds up after decryption (its share) while the server adds up the lanes of its mask (its share). For a result
the client receives in the clear, the lane masks sum to zero instead. So the server never folds.

Structure: a single conv2d (or linear) layer is out[o, p] = sum_q W[o, q] v[q, p], v[q, p] = x[idx(q, p)] (q a
(channel, tap) pair, p an output position; a linear layer has P = 1, q = input element). Both rows of N = 8192
slots are used (row r, block b of Bp = next_pow2(P) slots, position p):
    input ct i   block (r, b) holds column q: v[q, 0..P) (the client's gather of its own values)
    output ct    block (r, beta) is channel o (lanes: channels repeat with period Cb = next_pow2(C_o) in both
                 rows; split: more channels than blocks, each (out ct, row, block) one channel)
    giant g      the product with input ct i lands in output block (b - g) mod nb after g left rotations by
                 Bp (Horner: G - 1 rotations with one key); weight W[o(b - g), q(i, b)] on block (r, b)
A column placed at blocks {lane * Cb + a G + rho : a < Cb / G} is read exactly once by every channel (lanes), so
n_in = ceil(Q Cb / (2 nb G)) input ciphertexts serve every output with n_in * G products per output ciphertext.
G trades rotations against uploads (`plan_pack` picks it by cost). No rotation happens before a product, so the
noise of the result is fresh error x N t x (n_in G) and the flood covers it with about 40 bits (`bfv.py`).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np

from ...errors import ParameterError, ShapeError
from ...model.ir import Graph
from .latency_plan import ZERO, InputSpec, next_pow2

#: relative costs (one rotation = 1) for choosing the giant count: a product, an NTT transform, an input
#: ciphertext (client encryption, 197 KB, server load and NTT) and an output ciphertext (re-randomize, flood,
#: switch down, 131 KB, client decryption), measured on N = 8192 (`benchmarks/bfv_ops.py`)
K_ROT, K_MUL, K_NTT, K_CT_IN, K_CT_OUT = 1.0, 0.1, 0.2, 1.2, 3.0


@dataclass(frozen=True)
class Structure:
    """out[o, p] = sum_q W[o, q] x[idx[q, p]] (idx = ZERO: a padding zero); the output is (o, p) in C order."""
    Co: int
    Q: int
    P: int
    idx: np.ndarray


def structure(graph: Graph) -> Structure | None:
    """The (o, q, p) form of a segment holding one conv2d or one linear layer (flattens aside), else None."""
    layers = [layer for layer in graph.layers if layer.kind != "flatten"]
    if len(layers) != 1:
        return None
    layer = layers[0]
    if layer.kind == "linear":
        n_out, n_in = layer.weight.shape
        return Structure(int(n_out), int(n_in), 1, np.arange(n_in, dtype=np.int64)[:, None])
    if layer.kind != "conv2d" or graph.layers[0] is not layer:
        return None
    Ci, H, W = graph.input_shape
    Co, _, kh, kw = layer.weight.shape
    _, Ho, Wo = layer.out_shape(graph.input_shape)
    (sy, sx), (pt, _, pl, _) = layer.stride, layer.padding
    c, ky, kx = (a.ravel() for a in np.meshgrid(np.arange(Ci), np.arange(kh), np.arange(kw), indexing="ij"))
    y, x = (a.ravel() for a in np.meshgrid(np.arange(Ho), np.arange(Wo), indexing="ij"))
    iy = y[None, :] * sy + ky[:, None] - pt
    ix = x[None, :] * sx + kx[:, None] - pl
    ok = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
    idx = np.where(ok, (c[:, None] * H + iy) * W + ix, ZERO)
    return Structure(int(Co), int(Ci * kh * kw), int(Ho * Wo), idx.astype(np.int64))


def weights(st: Structure, A: np.ndarray) -> np.ndarray:
    """W (Co, Q) read off the segment's matrix A, which must be exactly the structure's (else ParameterError)."""
    q, p = np.nonzero(st.idx >= 0)
    o = np.repeat(np.arange(st.Co), len(q))
    qq, pp = np.tile(q, st.Co), np.tile(p, st.Co)
    vals = A[o * st.P + pp, st.idx[qq, pp]]
    W = np.zeros((st.Co, st.Q))
    W[o, qq] = vals  # any position's copy; checked below
    rebuilt = np.zeros_like(A)
    rebuilt[o * st.P + pp, st.idx[qq, pp]] = W[o, qq]
    if A.shape != (st.Co * st.P, A.shape[1]) or not np.array_equal(rebuilt, A):
        raise ParameterError("the segment's matrix is not the conv/linear structure the lane packing assumes")
    return W


@dataclass
class PackPlan:
    """A lane-packed BFV segment (module docstring): layouts, giants, product terms; public (digested)."""
    N: int
    Bp: int
    G: int
    st: Structure
    col_of: np.ndarray     # (n_in, 2, nb): the column q each input block holds, -1 none
    chan_of: np.ndarray    # (n_oc, 2, nb): the channel o each output block holds, -1 none
    terms: np.ndarray      # (T, 6): oc, i, g, r, b, (o * Q + q): block (r, b) of product (oc, i, g) carries W[o, q]
    input: InputSpec
    cost: float = 0.0
    kind = "pack"

    @property
    def slots(self) -> int:
        return self.N // 2

    @property
    def nb(self) -> int:
        return self.slots // self.Bp

    @property
    def n_oc(self) -> int:
        return int(self.chan_of.shape[0])

    @property
    def n_out(self) -> int:
        return self.st.Co * self.st.P

    @property
    def rotation_steps(self) -> list[int]:
        return [self.Bp] if self.G > 1 else []

    def products(self) -> list[tuple[int, int, int]]:
        """The (output ct, input ct, giant) of every plaintext product, in evaluation order."""
        return sorted({(int(a), int(b), int(c)) for a, b, c in self.terms[:, :3]})

    def n_rotations(self) -> int:
        return sum(max(g for oc2, _, g in self.products() if oc2 == oc) for oc in range(self.n_oc))

    def positions(self) -> tuple[np.ndarray, np.ndarray]:
        """(ct, slot) arrays (n_out, L): output (o, p) is the sum of its L lanes."""
        oc, r, beta = np.nonzero(self.chan_of >= 0)
        o = self.chan_of[oc, r, beta]
        order = np.lexsort((beta, r, oc, o))
        oc, r, beta, o = oc[order], r[order], beta[order], o[order]
        L = len(o) // self.st.Co
        if len(o) != L * self.st.Co or np.any(o.reshape(self.st.Co, L) != np.arange(self.st.Co)[:, None]):
            raise ShapeError("every channel must occupy the same number of lanes")
        P = self.st.P
        ci = np.repeat(oc.reshape(self.st.Co, 1, L), P, axis=1).reshape(-1, L)
        base = (r * self.slots + beta * self.Bp).reshape(self.st.Co, 1, L)
        si = (base + np.arange(P)[None, :, None]).reshape(-1, L)
        return ci, si

    def product_terms(self) -> int:
        """Products summed into one slot at most (lanes are summed after decryption, not here)."""
        return max(1, len({(i, g) for _, i, g in self.products()}))

    def digest(self) -> str:
        h = hashlib.sha256()
        h.update(json.dumps({"kind": "pack", "N": self.N, "Bp": self.Bp, "G": self.G, "Co": self.st.Co,
                             "Q": self.st.Q, "P": self.st.P}).encode())
        for a in (self.st.idx, self.col_of, self.chan_of, self.terms, self.input.gathers):
            h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        return h.hexdigest()


def _layout(st: Structure, N: int, G: int):
    """(Bp, col_of, chan_of) for G giants, or None when G does not divide the channel period."""
    S = N // 2
    Bp = next_pow2(st.P)
    if Bp > S:
        return None
    nb = S // Bp
    Co2 = next_pow2(st.Co)
    lanes = Co2 <= nb
    Cb = Co2 if lanes else nb
    if G > Cb:
        return None
    beta = np.arange(nb)
    if lanes:
        chan = np.where(beta % Cb < st.Co, beta % Cb, -1)
        chan_of = np.stack([chan, chan])[None]
        # a column slot: (row, lane, rho) -> blocks lane * Cb + a G + rho, a < Cb / G
        slots = [(r, lane, rho) for r in range(2) for lane in range(nb // Cb) for rho in range(G)]
    else:
        n_oc = -(-st.Co // (2 * nb))
        chan = np.arange(n_oc * 2 * nb).reshape(n_oc, 2, nb)
        chan_of = np.where(chan < st.Co, chan, -1)
        slots = [(None, 0, rho) for rho in range(G)]  # every row: each row holds other channels
    n_in = -(-st.Q // len(slots))
    col_of = np.full((n_in, 2, nb), -1, dtype=np.int64)
    a = np.arange(Cb // G) * G
    for q in range(st.Q):
        i, (r, lane, rho) = divmod(q, len(slots))[0], slots[q % len(slots)]
        rows = (0, 1) if r is None else (r,)
        for rr in rows:
            col_of[i, rr, lane * Cb + a + rho] = q
    return Bp, col_of, chan_of.astype(np.int64)


def _terms(st: Structure, col_of: np.ndarray, chan_of: np.ndarray, G: int) -> np.ndarray:
    nb = col_of.shape[2]
    rows = []
    b = np.arange(nb)
    for oc in range(chan_of.shape[0]):
        for i in range(col_of.shape[0]):
            for g in range(G):
                for r in range(2):
                    o = chan_of[oc, r, (b - g) % nb]
                    q = col_of[i, r, b]
                    ok = (o >= 0) & (q >= 0)
                    n = int(ok.sum())
                    if n:
                        rows.append(np.stack([np.full(n, oc), np.full(n, i), np.full(n, g), np.full(n, r), b[ok],
                                              o[ok] * st.Q + q[ok]], axis=1))
    terms = np.concatenate(rows) if rows else np.zeros((0, 6), dtype=np.int64)
    # every (o, q) once: a channel's lanes see each column exactly once by construction; keep the first anyway
    _, first = np.unique(terms[:, 5], return_index=True)
    terms = terms[np.sort(first)]
    if len(terms) != st.Co * st.Q:
        raise ParameterError("lane packing does not cover every weight")  # pragma: no cover - by construction
    return terms.astype(np.int64)


def _gathers(st: Structure, col_of: np.ndarray, N: int, Bp: int) -> np.ndarray:
    S = N // 2
    n_in, _, nb = col_of.shape
    g = np.full((n_in, N), ZERO, dtype=np.int64)
    i, r, b = np.nonzero(col_of >= 0)
    base = r * S + b * Bp
    g[i[:, None], base[:, None] + np.arange(st.P)[None, :]] = st.idx[col_of[i, r, b]]
    return g


def plan_pack(graph: Graph, N: int) -> PackPlan | None:
    """The cheapest lane-packed plan of a one-layer segment (conv2d or linear), or None."""
    st = structure(graph)
    if st is None:
        return None
    best = None
    G = 1
    while G <= N // 2:
        lay = _layout(st, N, G)
        if lay is None:
            break
        Bp, col_of, chan_of = lay
        n_in, n_oc = col_of.shape[0], chan_of.shape[0]
        if n_in <= 64:  # more uploads than this is never the cheap option; skip building the terms
            cost = (n_oc * n_in * G * K_MUL + n_oc * (G - 1) * K_ROT + n_in * (K_CT_IN + K_NTT)
                    + n_oc * G * K_NTT + n_oc * K_CT_OUT)
            if best is None or cost < best[0]:
                best = (cost, G, Bp, col_of, chan_of)
        G *= 2
    if best is None:
        return None
    cost, G, Bp, col_of, chan_of = best
    terms = _terms(st, col_of, chan_of, G)
    return PackPlan(N, Bp, G, st, col_of, chan_of, terms, InputSpec(_gathers(st, col_of, N, Bp)), cost)


class PackCompiled:
    """A `PackPlan` with its weight plaintexts (one per product) and bias plaintexts, on a BFV backend."""

    def __init__(self, plan: PackPlan, W: np.ndarray, bias: np.ndarray, backend):
        self.plan = plan
        P, Bp, S = plan.st.P, plan.Bp, plan.slots
        vecs: dict = {}
        t = plan.terms
        for k in plan.products():
            vecs[k] = np.zeros(plan.N)
        o, q = t[:, 5] // plan.st.Q, t[:, 5] % plan.st.Q
        w = W[o, q]
        base = t[:, 3] * S + t[:, 4] * Bp
        for n in range(len(t)):
            vecs[(int(t[n, 0]), int(t[n, 1]), int(t[n, 2]))][base[n]:base[n] + P] = w[n]
        self.pts = {k: backend.encode(v, None, 0) for k, v in vecs.items()}
        self.bias = []
        ci, si = plan.positions()
        for oc in range(plan.n_oc):
            v = np.zeros(plan.N)
            sel = ci[:, 0] == oc
            v[si[sel, 0]] = np.asarray(bias, dtype=np.float64)[sel]
            self.bias.append(backend.encode(v, None, 0) if np.any(v) else None)

    def weight_plaintexts(self):
        return list(self.pts.values())

    def evaluate(self, xs: list, backend, all_outputs: bool = True) -> list:
        plan = self.plan
        if len(xs) != plan.input.n_ct:
            raise ShapeError(f"expected {plan.input.n_ct} ciphertexts, got {len(xs)}")
        acc = self.accumulator(backend)
        for i, x in enumerate(xs):
            acc.add(i, x)
        return acc.result()

    def accumulator(self, backend) -> "PackAccumulator":
        """An evaluation fed one input ciphertext at a time (as they arrive): its products happen then."""
        return PackAccumulator(self, backend)


class PackAccumulator:
    """`PackCompiled.evaluate` in two halves: `add(i, x)` multiplies input ciphertext i by its weights into the
    (output ciphertext, giant) sums, `result()` turns the giant steps (Horner) and adds the bias. The sums are
    exact mod q, so the order the inputs come in does not change the result."""

    def __init__(self, compiled: PackCompiled, backend):
        self.c, self.be = compiled, backend
        self.inner: list[dict] = [{} for _ in range(compiled.plan.n_oc)]
        self.seen: set = set()

    def add(self, i: int, x) -> None:
        if i in self.seen or not 0 <= i < self.c.plan.input.n_ct:
            raise ShapeError(f"input ciphertext {i} given twice or out of range")
        self.seen.add(i)
        be = self.be
        for (oc, i2, g), pt in self.c.pts.items():
            if i2 != i:
                continue
            prod = be.mul_plain(x, pt)
            inner = self.inner[oc]
            inner[g] = prod if g not in inner else be.add(inner[g], prod)

    def result(self) -> list:
        plan, be = self.c.plan, self.be
        if len(self.seen) != plan.input.n_ct:
            raise ShapeError(f"expected {plan.input.n_ct} ciphertexts, got {len(self.seen)}")
        outs = []
        for oc in range(plan.n_oc):
            inner = self.inner[oc]
            acc = None
            for g in range(plan.G - 1, -1, -1):  # Horner: sum_g rot(inner_g, g Bp)
                if acc is not None:
                    acc = be.rotate(acc, plan.Bp)
                if g in inner:
                    acc = inner[g] if acc is None else be.add(acc, inner[g])
            if acc is None:
                raise ShapeError(f"output ciphertext {oc} receives no term")  # pragma: no cover
            if self.c.bias[oc] is not None:
                acc = be.add_plain(acc, self.c.bias[oc])
            outs.append(acc)
        return outs
