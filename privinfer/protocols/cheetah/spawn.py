"""Start and drive one SPU party process (`party.py`) from privinfer's client or server.

Why not multiprocessing like `ss`: the party needs a different interpreter (the SPU venv, see `party.py`),
so it is a plain subprocess with pipes on stdin/stdout. It never outlives us: it watches its parent and
exits when the parent dies or closes the pipe, and `close()` asks, then terminates, then kills.
"""
from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from ..._process import stop_child
from ...errors import PrivinferError, ProtocolError, TimeoutError_
from . import pipe

PARTY = Path(__file__).with_name("party.py")
REPO = Path(__file__).resolve().parents[3]
SPU_VERSION = "0.9.5"
MESSAGE_TIMEOUT = 60.0  # once a party starts answering, the rest of its message must follow within this


def spu_python() -> str:
    """The interpreter that has `spu` installed: $PRIVINFER_SPU_PYTHON, else the repo's `.venv-spu`."""
    exe = os.environ.get("PRIVINFER_SPU_PYTHON") or str(REPO / ".venv-spu" / "bin" / "python")
    if not os.access(exe, os.X_OK):
        raise PrivinferError(f"protocol 'cheetah' needs SPU {SPU_VERSION} in its own venv: run `make spu` "
                             f"(or set PRIVINFER_SPU_PYTHON); {exe} not found")
    return exe


class PartyProcess:
    """One SPU party; `call` raises typed errors when it dies, stalls or reports a failure."""

    def __init__(self, role: str):
        self.role = role
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
        env.update({"JAX_PLATFORMS": "cpu", "PYTHONNOUSERSITE": "1",
                    "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS", "1")})
        self.proc = subprocess.Popen([spu_python(), "-u", str(PARTY)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=None, env=env, close_fds=True)
        self._closed = False

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def send(self, header: dict, *payloads: bytes) -> None:
        try:
            pipe.write_msg(self.proc.stdin.fileno(), header, *payloads)
        except (OSError, ValueError):
            raise self._dead_error() from None

    def recv(self, timeout: float, what: str) -> tuple[dict, list[bytes]]:
        fd = self.proc.stdout.fileno()
        try:
            # wait for the first byte with the caller's timeout, then read the whole message: a timeout in
            # the middle of a message would lose its start and put the pipe out of step
            if not select.select([fd], [], [], max(0.0, timeout))[0]:
                raise TimeoutError_(f"SPU {self.role} gave no answer to {what} within {timeout:.0f} s")
            header, payloads = pipe.read_msg(fd, MESSAGE_TIMEOUT)
        except pipe.PipeTimeout:
            raise self._dead_error() from None
        except (EOFError, OSError, ValueError):
            raise self._dead_error() from None
        if "error" in header:
            raise ProtocolError(f"SPU {self.role} failed in {what}: {header['error']}: {header.get('message', '')}")
        return header, payloads

    def call(self, header: dict, *payloads: bytes, timeout: float, what: str | None = None):
        self.send(header, *payloads)
        return self.recv(timeout, what or str(header.get("cmd")))

    def _dead_error(self) -> ProtocolError:
        try:
            code = self.proc.wait(0.5)
        except subprocess.TimeoutExpired:
            code = None
        return ProtocolError(f"SPU {self.role} process died (exit code {code})" if code is not None
                             else f"SPU {self.role} process stopped answering")

    def close(self, grace: float = 2.0) -> None:
        """Ask the party to exit, then terminate, then kill; never raises."""
        if self._closed:
            return
        self._closed = True
        stop_child(self.proc, lambda: pipe.write_msg(self.proc.stdin.fileno(), {"cmd": "exit"}), grace)
