"""One SPU CHEETAH party: the process privinfer's client or server starts next to itself.

Why a separate process and interpreter: `spu` pins jax/numpy versions that the main venv (torch, TenSEAL,
CrypTen) cannot share, so this file runs under the SPU venv's python and imports only numpy, jax, spu and its
two sibling files (`pipe`, `lower`). Its parent talks to it over stdin/stdout with `pipe` frames.

Rank 0 is the server (owns the weights), rank 1 the client (owns the input). Both use SPU's colocated mode:
each party turns only ITS OWN array into a share (`make_shares(..., owner_rank=self)`) and keeps it; the
other party's slot is a placeholder made from zeros. No share of a private value ever leaves its owner's
process except through CHEETAH itself. The output stays secret-shared; rank 0 hands its output share to its
parent, which forwards it to the client, so only the client reconstructs the logits.

Commands (parent -> party):  init {rank, addrs, spec, fxp_bits, timeout_s} [+ weights .npz for rank 0]
                             run {batch} [+ input tensor for rank 1]   reveal [peer share]   exit
Traffic figures come from SPU's own link counters ("Link details" in its profile log, read from our fd 2).
"""
from __future__ import annotations

import io
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402

import lower  # noqa: E402
import pipe  # noqa: E402

LINK_RE = re.compile(rb"Link details: total send bytes (\d+), recv bytes (\d+), send actions (\d+), recv actions (\d+)")


def _exit_with_parent() -> None:
    """Load privinfer/_process.py by path (the package itself needs torch) and use its parent watch."""
    import importlib.util
    path = os.path.join(HERE, "..", "..", "_process.py")
    spec = importlib.util.spec_from_file_location("_privinfer_process", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.exit_with_parent(code=3)


class LinkCounter:
    """Reads SPU's log (our fds 1 and 2) and returns the link counters of the run that just ended.

    The log goes to an unlinked temporary file, never to a pipe: `Runtime.run` holds the GIL, so a pipe
    drained by a Python thread fills up and deadlocks the run. Error lines are passed on to our parent's
    stderr (everything with PRIVINFER_SPU_LOG=1).
    """

    def __init__(self):
        import tempfile
        fd, path = tempfile.mkstemp(prefix="privinfer-spu-log-")
        os.close(fd)
        self.w = os.open(path, os.O_WRONLY | os.O_APPEND)
        self.r = os.open(path, os.O_RDONLY)
        os.unlink(path)
        self.orig = os.dup(2)
        os.dup2(self.w, 1)  # SPU's logger writes to stdout; the parent's frames use a private dup of it
        os.dup2(self.w, 2)
        self.verbose = bool(os.environ.get("PRIVINFER_SPU_LOG"))

    def _drain(self) -> bytes:
        chunks = []
        while True:
            c = os.read(self.r, 1 << 20)
            if not c:
                return b"".join(chunks)
            chunks.append(c)

    def wait(self, timeout: float = 2.0) -> dict:
        deadline, text, m = time.monotonic() + timeout, b"", None
        while m is None and time.monotonic() < deadline:
            text += self._drain()
            m = list(LINK_RE.finditer(text))[-1:] or None
            if m is None:
                time.sleep(0.01)
        os.ftruncate(self.w, 0)
        os.lseek(self.r, 0, os.SEEK_SET)
        for line in text.split(b"\n"):
            if line and (self.verbose or b"[error]" in line or b"Error" in line):
                os.write(self.orig, line + b"\n")
        s, r, sa, ra = (int(v) for v in m[0].groups()) if m else (0, 0, 0, 0)
        return {"bytes_sent": s, "bytes_received": r, "messages_sent": sa, "messages_received": ra}


class Party:
    def __init__(self, msg: dict, payloads: list[bytes], counter: LinkCounter):
        import spu.api as api
        from spu import libspu
        self.api, self.libspu, self.counter = api, libspu, counter
        self.rank = int(msg["rank"])
        self.spec = msg["spec"]
        self.fn = lower.build(self.spec)
        self.names = lower.param_names(self.spec)
        cfg = libspu.RuntimeConfig(protocol=libspu.ProtocolKind.CHEETAH, field=libspu.FieldType.FM64,
                                   fxp_fraction_bits=int(msg["fxp_bits"]))
        cfg.experimental_enable_colocated_optimization = True
        cfg.enable_hal_profile = True  # makes SPU log its link counters after each run
        self.cfg = cfg
        self.io = api.Io(2, cfg)
        desc = libspu.link.Desc()
        desc.recv_timeout_ms = int(float(msg["timeout_s"]) * 1000)
        desc.connect_retry_times = max(1, int(float(msg["timeout_s"]) * 2))
        desc.connect_retry_interval_ms = 500
        desc.throttle_window_size = 0
        for r, addr in enumerate(msg["addrs"]):
            desc.add_party(f"privinfer_{r}", addr)
        self.link = libspu.link.create_brpc(desc, self.rank)
        self.rt = api.Runtime(self.link, cfg)
        self.exes: dict[int, object] = {}
        params, _ = lower.example_args(self.spec, 1)
        if self.rank == 0:
            with np.load(io.BytesIO(payloads[0]), allow_pickle=False) as z:
                params = [np.asarray(z[n], dtype=np.float64) for n in self.names]
        for n, p in zip(self.names, params):  # the weights are set once; the zeros on rank 1 are placeholders
            self.rt.set_var("w" + n, self._share(p, owner=0))

    def _share(self, a: np.ndarray, owner: int):
        a = np.ascontiguousarray(a, dtype=np.float64)
        return self.io.make_shares(a, self.libspu.Visibility.VIS_SECRET, owner)[self.rank]

    def _exe(self, batch: int):
        if batch not in self.exes:
            from spu.utils import frontend as fe
            params, x = lower.example_args(self.spec, batch)
            names = ["w" + n for n in self.names] + ["x"]
            exe, _ = fe.compile(fe.Kind.JAX, self.fn, (params, x), {}, names,
                                [self.libspu.Visibility.VIS_SECRET] * len(names),
                                lambda outs: [f"y{batch}"])
            self.exes[batch] = exe
        return self.exes[batch]

    def run(self, batch: int, x: np.ndarray | None) -> tuple[dict, list[bytes]]:
        t0 = time.perf_counter()
        exe = self._exe(batch)
        t1 = time.perf_counter()
        if x is None:
            shape = (batch, *[int(v) for v in self.spec["input_shape"]])
            x = np.zeros(shape)
        self.rt.set_var("x", self._share(x, owner=1))
        self.rt.run(exe)
        share = self.rt.get_var(exe.output_names[0])
        comm = self.counter.wait()
        self.last_share = share
        out = {"s": time.perf_counter() - t0, "compile_s": t1 - t0, "comm": comm}
        if self.rank == 0:
            return out, [bytes(share.meta), *[bytes(c) for c in share.share_chunks]]
        return out, []

    def reveal(self, payloads: list[bytes]) -> np.ndarray:
        peer = self.libspu.Share()
        peer.meta = payloads[0]
        peer.share_chunks = payloads[1:]
        if bytes(peer.meta) != bytes(self.last_share.meta) or len(payloads) - 1 != len(self.last_share.share_chunks):
            raise ValueError("the server's output share does not match this run's output")
        return np.asarray(self.io.reconstruct([peer, self.last_share]), dtype=np.float64)


def _tensor(b: bytes) -> np.ndarray:
    with np.load(io.BytesIO(b), allow_pickle=False) as z:
        return np.asarray(z["x"], dtype=np.float64)


def _npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def main() -> None:
    _exit_with_parent()
    rfd, wfd = sys.stdin.fileno(), os.dup(sys.stdout.fileno())
    counter = LinkCounter()  # from here on fds 1 and 2 feed the counter: stray prints cannot corrupt frames
    party = None
    while True:
        try:
            msg, payloads = pipe.read_msg(rfd)
        except (EOFError, OSError):
            os._exit(0)
        cmd = msg.get("cmd")
        try:
            if cmd == "exit":
                break
            if cmd == "init":
                t0 = time.perf_counter()
                party = Party(msg, payloads, counter)
                # the first run does CHEETAH's one-time set-up (base OTs, silent-OT seeds, HE keys)
                out, _ = party.run(1, None)
                pipe.write_msg(wfd, {"ok": True, "s": time.perf_counter() - t0, "comm": out["comm"]})
            elif cmd == "run":
                x = _tensor(payloads[0]) if party.rank == 1 else None
                out, blobs = party.run(int(msg["batch"]), x)
                pipe.write_msg(wfd, {"ok": True, **out}, *blobs)
            elif cmd == "reveal":
                pipe.write_msg(wfd, {"ok": True}, _npz(y=party.reveal(payloads)))
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as e:  # report, then stop: a failed SPU run leaves the link out of step
            pipe.write_msg(wfd, {"error": type(e).__name__, "message": str(e)[:2000]})
            break
    os._exit(0)  # no stop_link(): the peer may be gone already, and brpc would retry for seconds


if __name__ == "__main__":
    main()
