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
