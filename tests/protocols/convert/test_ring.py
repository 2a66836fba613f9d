"""convert/ring.py in two real CrypTen parties: the wrap-bit lift of mod-t shares and the mod-t reduction
before a BFV segment, the lift fused with a ReLU and a ReLU fused with the reduction, against exact integer arithmetic (edge cases included: a + b = t - 1, t, 2t - 2,
y = +-h, and the largest ring values the next segment accepts)."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from privinfer.protocols.he.bfv import choose_params, uniform_mod

PARTY = Path(__file__).with_name("ring_party.py")


def run_parties(tmp_path, data: dict) -> dict:
    infile, outfile = tmp_path / "in.npz", tmp_path / "out.npz"
    np.savez(infile, **data)
    rdv = f"file://{tmp_path / 'rdv'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path.cwd()), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(PARTY), str(r), rdv, str(infile), str(outfile)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for r in (0, 1)]
    try:
        outs = [p.communicate(timeout=240) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), [o[1].decode()[-2000:] for o in outs]
    return dict(np.load(outfile))


def test_lift_and_reduce_against_exact_integers(tmp_path):
    t = choose_params(2.0 ** 36).t
    h = (t - 1) // 2
    D = 1 << 16
    rng = np.random.default_rng(7)
    y = np.concatenate([[h, -h, 0, 1, -1], rng.integers(-h, h, size=395, endpoint=True)])
    m = uniform_mod(t, len(y))
    a = np.mod(y + m, t)                      # the client's share (decrypted y + m)
    b = np.mod(h - m, t)                      # the server's share
    # edge cases of the wrap bit w = [a + b >= t] (b = (y + h - a) mod t)
    a[0], b[0] = t - 1, 0            # y = h, a + b = t - 1: no wrap, the largest sum without one
    a[1], b[1] = 1, t - 1            # y = -h, a + b = t exactly: wrap
    a[2], b[2] = h + 1, t - 1        # y = 0, a + b = t + h: wrap
    a[3], b[3] = t - 1, t - 1        # a + b = 2t - 2, the largest sum: wrap, y = h - 1
    y[3] = a[3] + b[3] - h - t
    X = np.concatenate([[h, -h, 0, h - 1], rng.integers(-h, h, size=396, endpoint=True)]).astype(np.int64)
    r = uniform_mod(t, len(X))
    r[:4] = [t - 1, 0, t - 1 - h, t - h]
    t2 = choose_params(2.0 ** 30).t
    r2 = uniform_mod(t2, len(y))
    # a (1, 3, 4, 6) tensor for MaxPool 2x2 -> ReLU -> reduce: window 0 all negative, window 1 a tie
    P = rng.integers(-h // 2, h // 2, size=(1, 3, 4, 6))
    P[0, 0, :2, :2] = [[-5, -3], [-9, -1]]
    P[0, 0, :2, 2:4] = [[7, 7], [-2, 7]]
    rp = uniform_mod(t, 18).reshape(1, 3, 2, 3)
    out = run_parties(tmp_path, {"t": t, "D": D, "a": a, "b": b, "X": X, "r": r, "t2": t2, "r2": r2, "P": P, "rp": rp})
    assert np.array_equal(a + b - h - t * (a + b >= t), y)  # the shares do encode y
    # lift: y / D on CrypTen's grid, within 1.5 units (deterministic, no probabilistic truncation)
    assert np.max(np.abs(out["lifted"] - y / D)) <= 1.5
    # lift_relu: ReLU(y) / D from the same shares in one batched comparison (exactly 0 where y < 0)
    assert np.max(np.abs(out["relu"] - np.maximum(y, 0) / D)) <= 1.5
    assert np.all(out["relu"][y < 0] == 0) and np.all(out["relu"][y > 2 * D] > 0)
    # reduce: exactly (X + h + r) mod t, in [0, t)
    assert np.array_equal(out["z"], np.mod(X + h + r, t))
    assert out["z"].min() >= 0 and out["z"].max() < t
    # relu + reduce in one batched comparison: exactly (ReLU(X) + h + r) mod t
    assert np.array_equal(out["zr"], np.mod(np.maximum(X, 0) + h + r, t))
    # lift + relu + reduce into the next modulus t2, one batched comparison: (ReLU(y') + h2 + r2) mod t2 for the
    # lifted y' (within 1.5 units of y / D; exactly h2 + r2 where y < 0)
    h2 = (t2 - 1) // 2
    got = np.mod(out["zw"] - h2 - r2, t2)
    got = np.where(got > h2, got - t2, got)  # ReLU(y') back from the opening
    assert np.all(got[y < 0] == 0) and np.max(np.abs(got - np.maximum(y, 0) / D)) <= 1.5
    assert out["zw"].min() >= 0 and out["zw"].max() < t2
    # MaxPool's last level, ReLU and the reduction in one batched comparison: exact
    pooled = P.reshape(1, 3, 2, 2, 3, 2).max(axis=(3, 5))
    assert np.array_equal(out["zp"], np.mod(np.maximum(pooled, 0) + h + rp, t))
