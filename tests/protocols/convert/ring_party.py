"""One CrypTen party for tests/protocols/convert/test_ring.py (run as a subprocess: rank, rendezvous, in, out).

CrypTen's trusted-first-party provider stands in for the dealer here: the test checks the arithmetic of
`convert.ring` (exact integers), not the dealer."""
import os
import sys

import numpy as np


def main(rank: int, rdv: str, infile: str, outfile: str) -> None:
    from privinfer.protocols.ss.worker import mpc_env
    mpc_env(rank, rdv, "lo")
    from privinfer._compat.crypten_import import load_crypten
    crypten = load_crypten()
    crypten.cfg.mpc.provider = "TFP"
    crypten.cfg.encoder.precision_bits = 16
    crypten.init()
    from crypten.mpc import MPCTensor
    import torch
    from privinfer.protocols.convert import ring
    d = np.load(infile)
    t, D = int(d["t"]), int(d["D"])
    y = ring.lift(rank, d["b"] if rank == 0 else d["a"], t, D, 16)
    lifted = y._tensor.reveal(dst=1)
    relu = ring.lift_relu(rank, d["b"] if rank == 0 else d["a"], t, D, 16)._tensor.reveal(dst=1)
    X = torch.as_tensor(d["X"], dtype=torch.int64)
    x = MPCTensor.from_shares(X if rank == 1 else torch.zeros_like(X), precision=16)
    z = ring.reduce_reveal(rank, x, d["r"] if rank == 0 else None, t)
    zr = ring.relu_reduce_reveal(rank, x, d["r"] if rank == 0 else None, t)
    t2 = int(d["t2"])
    zw = ring.lift_relu_reduce_reveal(rank, d["b"] if rank == 0 else d["a"], t, D, d["r2"] if rank == 0 else None, t2)
    P = torch.as_tensor(d["P"], dtype=torch.int64)
    xp = MPCTensor.from_shares(P if rank == 1 else torch.zeros_like(P), precision=16)
    zp = ring.pool_relu_reduce_reveal(rank, xp, (2, 2), (2, 2), d["rp"] if rank == 0 else None, t)
    if rank == 1:
        np.savez(outfile, lifted=lifted.numpy(), relu=relu.numpy(), z=z.numpy(), zr=zr.numpy(), zw=zw.numpy(), zp=zp.numpy())
    crypten.uninit()


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4])
    sys.stdout.flush()
    os._exit(0)
