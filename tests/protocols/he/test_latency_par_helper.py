"""The helper process's side of a shared latency query (`latency_par_helper`), run in this process: its cache
of connections' keys drops the least recently *used* connection, not the oldest one, and says which."""
from __future__ import annotations

import numpy as np
import pytest

from privinfer.protocols.he import latency_par_helper as H
from privinfer.protocols.he.context import CKKSContext
from privinfer.protocols.he.params import HEParams


def test_key_cache_order():
    c = H.KeyCache(2)
    assert c.put("a", 1) == [] and c.put("b", 2) == []
    assert c.use("a") == 1            # a is now the most recently used
    assert c.put("c", 3) == ["b"]     # insertion order would drop a
    assert c.keys() == ["a", "c"] and "b" not in c and len(c) == 2
    assert c.put("a", 4) == [] and c.keys() == ["c", "a"]  # replacing is a use
    c.pop("c")
    c.pop("c")  # twice: forgetting what is gone is no error
    with pytest.raises(KeyError):
        c.use("c")
    assert c.keys() == ["a"]


def test_the_helper_keeps_the_connection_that_queries(monkeypatch):
    monkeypatch.setattr(H, "_state", H._HelperState())
    params = HEParams(N=4096, coeff_mod_bit_sizes=(35, 30, 40), scale_bits=30, depth=1, slots=2048)
    cctx = CKKSContext.create(params, [1])
    pk, rk, gk = cctx.public_blobs()
    rng = np.random.default_rng(0)
    S = params.slots
    d = rng.standard_normal(S)
    # one channel-packed step with a single term (o, c, g, b) = 0: out = x * d, the helper's whole share
    head = {"op": "lat_plan", "plan": "p", "step": 0, "N": params.N, "bits": list(params.coeff_mod_bit_sizes),
            "n_in": 1, "n_out": 1, "n1": 1, "slots": S, "scale": 2.0 ** 30, "level": 0, "key_paths": {}}
    keys = np.zeros((1, 4), dtype=np.int64)
    assert H.handle(head, [keys.tobytes(), np.packbits([True]).tobytes(), d.tobytes()]) == ({"ok": True}, [])
    for i in range(H.MAX_SESSIONS):
        assert H.handle({"op": "lat_keys", "key": f"c{i}", "plan": "p"}, [pk, rk, gk]) == \
            ({"ok": True, "evicted": []}, [])
    x = rng.standard_normal(S)
    blob = cctx.encrypt(x, 2.0 ** 30)

    def query(key):
        rep, out = H.handle({"op": "lat_rot", "key": key, "plan": "p", "step": 0}, [blob])
        return cctx.decrypt(out[0])

    assert np.abs(query("c0") - x * d).max() < 1e-3
    rep, _ = H.handle({"op": "lat_keys", "key": "new", "plan": "p"}, [b"", rk, gk])  # the public key is unused
    assert rep["evicted"] == ["c1"]  # insertion order would have dropped c0, which was just used
    assert np.abs(query("c0") - x * d).max() < 1e-3
    with pytest.raises(KeyError):
        query("c1")
    H.handle({"op": "lat_forget", "key": "c0"}, [])
    assert H._state.sessions.keys() == ["c2", "c3", "new"]
