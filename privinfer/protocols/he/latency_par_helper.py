"""The helper process's side of `latency_par`: the plans' plaintexts and the connections' keys it holds.

Why apart: this code runs in the HE helper process (`batch_helper`'s child, started without the parent's
packages), the parent's side (`latency_par`) decides what to share and when; the two meet only in the
`lat_*` messages on the helper's pipe.

The key cache. Each connection's relinearization and Galois keys (~25 MB for minionn-mnist-he) stay here
until the parent says `lat_forget` (the connection closed). A parent that could not say it (the helper was
busy at that moment) leaves keys behind, so the cache holds at most MAX_SESSIONS connections and drops the
*least recently used* one: every `lat_rot` marks its connection used, so a connection that is querying keeps
its keys while an idle or finished one goes first (insertion order dropped the oldest connection, even an
active one, whose next query then ran in-process while the helper reloaded its keys). The `lat_keys` reply
names the connections dropped, so that the parent stops counting on them (`Helper.known`).
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np

#: connections whose keys the helper keeps (least recently used dropped first; ~25 MB each for minionn-mnist-he)
MAX_SESSIONS = 4


class KeyCache:
    """Connection key -> its evaluation keys, at most `limit`, least recently used dropped first."""

    def __init__(self, limit: int):
        self.limit = int(limit)
        self._items: OrderedDict = OrderedDict()

    def put(self, key: str, value) -> list[str]:
        """Store (or replace) `key` as the most recently used; returns the keys dropped to make room."""
        self._items[key] = value
        self._items.move_to_end(key)
        dropped = []
        while len(self._items) > self.limit:
            dropped.append(self._items.popitem(last=False)[0])
        return dropped

    def use(self, key: str):
        """The value of `key`, now the most recently used (KeyError: not held, e.g. dropped)."""
        self._items.move_to_end(key)
        return self._items[key]

    def pop(self, key: str) -> None:
        self._items.pop(key, None)

    def __contains__(self, key) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[str]:
        """Least recently used first."""
        return list(self._items)


class _HelperState:
    def __init__(self):
        self.ctxs: dict = {}     # (N, bits) -> SEAL objects
        self.plans: dict = {}    # plan -> {step: (RotStep-like, pts)}, plus "_ctx" and "_paths"
        self.sessions = KeyCache(MAX_SESSIONS)  # key -> (galois keys, relin keys)


_state = _HelperState()


def handle(header: dict, payloads: list[bytes]) -> tuple[dict, list[bytes]] | None:
    """One `lat_*` request in the helper process; returns the reply (None: no reply)."""
    import tenseal.sealapi as seal
    from .context import dump, levels, load_into, seal_context
    from .convpack import RotStep
    from .convpack_eval import rot_partials
    from .latency_eval import SealBackend
    op = header["op"]
    if op == "lat_forget":
        _state.plans.pop(header.get("plan"), None)
        _state.sessions.pop(header.get("key"))
        return None
    if op == "lat_plan":
        ck = (int(header["N"]), tuple(int(b) for b in header["bits"]))
        if ck not in _state.ctxs:
            sc = seal_context(seal.SCHEME_TYPE.CKKS, ck[0], ck[1])
            _state.ctxs[ck] = (sc, seal.CKKSEncoder(sc), seal.Evaluator(sc), [pid for pid, _ in levels(sc)])
        sc, enc, ev, pids = _state.ctxs[ck]
        S, n_out = int(header["slots"]), int(header["n_out"])
        keys = np.frombuffer(payloads[0], dtype=np.int64).reshape(-1, 4)
        mask = np.unpackbits(np.frombuffer(payloads[1], dtype=np.uint8))[:len(keys)].astype(bool)
        vecs = np.frombuffer(payloads[2], dtype=np.float64).reshape(-1, S)
        empty = np.zeros(0, dtype=np.int64)
        st = RotStep(1, int(header["n_in"]), np.zeros((n_out, 1), dtype=np.int64), int(header["n1"]), keys,
                     empty, empty, empty, empty)
        st.out_idx = np.zeros((n_out, S), dtype=np.int64)
        pts = {}
        for i, r in enumerate(keys[mask]):
            pt = seal.Plaintext()
            enc.encode(vecs[i].tolist(), pids[int(header["level"])], float(header["scale"]), pt)
            if not pt.is_zero():  # all-zero weights (a pruned network): SEAL refuses the product, and it adds nothing
                pts[tuple(int(v) for v in r)] = pt
        plan = _state.plans.setdefault(header["plan"], {"_ctx": ck, "_paths": header["key_paths"]})
        plan[int(header["step"])] = (st, pts)
        return {"ok": True}, []
    plan = _state.plans[header["plan"]]
    sc, enc, ev, pids = _state.ctxs[plan["_ctx"]]
    if op == "lat_keys":
        gk = load_into(seal.GaloisKeys(), sc, payloads[2], "Galois keys") if payloads[2] else None
        rk = load_into(seal.RelinKeys(), sc, payloads[1], "relinearization keys")
        dropped = _state.sessions.put(header["key"], (gk, rk))
        return {"ok": True, "evicted": dropped}, []
    if op == "lat_rot":
        gk, rk = _state.sessions.use(header["key"])
        st, pts = plan[int(header["step"])]
        view = _View(sc, ev, gk, rk)
        be = SealBackend(view)
        paths = {int(k): v for k, v in plan["_paths"].items()}
        if paths:
            from .rotkeys import ComposedRotations
            be = ComposedRotations(be, paths, st.out_idx.shape[1])
        xs = [load_into(seal.Ciphertext(), sc, b, "share input") for b in payloads]
        out = rot_partials(be, st, pts, xs, only=set(pts))
        return {"ok": True}, [dump(x) if x is not None else b"" for x in out]
    return {"error": "other", "msg": f"unknown op {op!r}"}, []


class _View:
    """What `SealBackend` reads of a context."""

    def __init__(self, seal_ctx, evaluator, galois_keys, relin_keys):
        self.seal, self.evaluator, self.galois_keys, self.relin_keys = seal_ctx, evaluator, galois_keys, relin_keys


__all__ = ["KeyCache", "MAX_SESSIONS", "handle"]
