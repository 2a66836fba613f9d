"""`privinfer._compat.crypten_import`: CrypTen 0.4.1 imports on torch 2.x and computes across processes."""
from __future__ import annotations

import multiprocessing as mp
import socket
import sys

import pytest
import torch


def test_load_crypten_on_current_torch():
    from privinfer._compat.crypten_import import _NEW, _OLD, load_crypten
    crypten = load_crypten()
    assert crypten.__version__ == "0.4.1"
    assert int(torch.__version__.split(".")[0]) >= 2
    assert load_crypten() is crypten                      # idempotent
    assert _OLD in sys.modules                            # the moved module is reachable by its old name
    reg = sys.modules[_OLD]
    assert hasattr(reg, "registry") and hasattr(reg, "onnx_symbolic")   # what CrypTen's importer reaches for
    assert reg.__name__ in (_OLD, _NEW)
    # the tensor API privinfer compiles to is present (the ONNX path is never used)
    for op in ("conv2d", "matmul", "relu", "max_pool2d", "avg_pool2d", "square", "get_plain_text"):
        assert hasattr(crypten.mpc.MPCTensor, op), op


def _party(rank: int, port: int, q) -> None:
    import os
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", RENDEZVOUS=f"tcp://127.0.0.1:{port}",
                      DISTRIBUTED_BACKEND="gloo", GLOO_SOCKET_IFNAME="lo")
    import torch
    from privinfer._compat.crypten_import import load_crypten
    crypten = load_crypten()
    crypten.cfg.mpc.provider = "TFP"  # two processes, no dealer: party 0 makes the triples
    crypten.init()
    a = torch.tensor([1.5, -2.0, 3.25])
    b = torch.tensor([0.5, 4.0, -1.0])
    ea = crypten.cryptensor(a if rank == 0 else torch.zeros(3), src=0)   # each party shares its own
    eb = crypten.cryptensor(b if rank == 1 else torch.zeros(3), src=1)
    out = ((ea + eb) * eb).get_plain_text()
    q.put((rank, out.tolist(), crypten.comm.get().get_world_size()))
    crypten.uninit()


def test_two_party_crypten_in_separate_processes():
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [ctx.Process(target=_party, args=(r, port, q), daemon=True) for r in range(2)]
    for p in procs:
        p.start()
    try:
        results = sorted(q.get(timeout=120) for _ in procs)
    finally:
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
    want = ((torch.tensor([1.5, -2.0, 3.25]) + torch.tensor([0.5, 4.0, -1.0])) * torch.tensor([0.5, 4.0, -1.0]))
    for rank, out, ws in results:
        assert ws == 2
        assert out == pytest.approx(want.tolist(), abs=1e-3)
    assert [p.exitcode for p in procs] == [0, 0]
