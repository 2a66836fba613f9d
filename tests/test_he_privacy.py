"""he: privacy of the server's side -- scratch files the peer's bytes pass through, and a WELCOME that says
nothing about the weights (issue 9, section 3)."""
from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest

pytest.importorskip("tenseal")

from privinfer.model.ir import Conv2d, Flatten, Graph, Linear, Poly  # noqa: E402
from privinfer.protocols.he import context as hectx  # noqa: E402
from privinfer.transport.frames import encode_json  # noqa: E402


def test_scratch_files_live_in_a_private_directory_and_never_follow_a_planted_symlink(tmp_path, monkeypatch):
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    # the old code wrote to /dev/shm/privinfer-he-<pid>-<thread>-<n>: plant symlinks at those names
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
    planted = []
    if shm and os.access(shm, os.W_OK):
        import threading
        for n in range(8):
            p = os.path.join(shm, f"privinfer-he-{os.getpid()}-{threading.get_ident()}-{n}")
            if not os.path.lexists(p):
                os.symlink(victim, p)
                planted.append(p)
    try:
        from privinfer.protocols.he.params import HEParams
        params = HEParams(N=4096, coeff_mod_bit_sizes=(40, 20, 40), scale_bits=20, depth=1, slots=2048)
        ctx = hectx.CKKSContext.create(params)
        blob = ctx.encrypt(np.arange(4.0))
        assert np.allclose(ctx.decrypt(blob)[:4], np.arange(4.0), atol=1e-2)  # dump + load round trip
        d = hectx._private_dir()
        mode = stat.S_IMODE(os.lstat(d).st_mode)
        assert mode == 0o700 and os.lstat(d).st_uid == os.getuid() and not os.path.islink(d)
        # a file is always created fresh: a symlink planted at the next name is refused, not followed
        monkeypatch.setattr(hectx, "_counter", iter([10 ** 9]))
        import threading
        trap = os.path.join(d, f"{threading.get_ident()}-{10 ** 9}")
        os.symlink(victim, trap)
        with pytest.raises(FileExistsError):
            hectx.dump(ctx.public_key)
        os.unlink(trap)
        assert victim.read_bytes() == b"precious"
    finally:
        for p in planted:
            os.unlink(p)


def _small_net(seed: int, scale: float = 1.0) -> Graph:
    rng = np.random.default_rng(seed)
    return Graph((1, 8, 8), (Conv2d(rng.normal(0, 0.3 * scale, (2, 1, 3, 3)), rng.normal(0, 0.1, 2), stride=(2, 2)),
                             Poly((0.0, 0.0, 1.0)), Flatten(),
                             Linear(rng.normal(0, 0.2 * scale, (4, 18)), rng.normal(0, 0.1, 4))))


def _welcome_bytes(graph: Graph, protocol: str, options: dict) -> bytes:
    """The WELCOME frame's payload exactly as a real server sends it over TCP."""
    from privinfer.server import serve
    from privinfer.transport import Channel
    from privinfer.transport.frames import FrameType
    import socket
    srv = serve(graph, protocol)
    try:
        with Channel(socket.create_connection(("127.0.0.1", srv.port), timeout=30)) as ch:
            ch.send_json({"protocol": protocol, "options": options}, FrameType.HELLO)
            ftype, payload = ch.recv_frame()
            assert ftype == FrameType.WELCOME
            return payload
    finally:
        srv.shutdown()


@pytest.mark.parametrize("protocol,options", [("he", {"packing": "latency"}),
                                              ("he", {"packing": "batch", "batch_size": 4}),
                                              ("plain", {})])
def test_welcome_is_a_function_of_the_architecture_only(protocol, options):
    a, b = _small_net(1), _small_net(2, scale=1.7)  # same architecture, other weights and magnitudes
    wa, wb = _welcome_bytes(a, protocol, options), _welcome_bytes(b, protocol, options)
    assert wa == wb
    assert b"precision_bits" not in wa
    # and the comparison can fail: another architecture gives another WELCOME
    other = Graph((1, 8, 8), a.layers[:3] + (Linear(np.ones((3, 18)), np.zeros(3)),))
    assert _welcome_bytes(other, protocol, options) != wa
