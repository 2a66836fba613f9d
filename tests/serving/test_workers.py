"""`privinfer serve --workers N` as a user runs it: sessions spread over worker processes, one
`max_sessions` across them, a killed worker's session fails with a typed error and the worker is replaced,
and SIGTERM leaves no process behind."""
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import privinfer
from privinfer import zoo
from privinfer._process import alive, descendants
from privinfer.errors import PeerError, ProtocolError, ResourceLimitError
from privinfer.model.reference import run_reference

CLI = [sys.executable, "-m", "privinfer"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    return out


@pytest.fixture(scope="module")
def server():
    port = _free_port()
    proc = subprocess.Popen(CLI + ["serve", "--protocol", "plain", "--model", "minionn-mnist", "--port", str(port), "--workers", "2",
                                   "--max-sessions", "3"], stdout=subprocess.PIPE, text=True)
    try:
        assert "serving" in proc.stdout.readline()
        yield proc, port
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def _workers(proc) -> list[int]:
    return sorted(_children(proc.pid))


def test_sessions_spread_over_workers_and_answer_right(server):
    proc, port = server
    assert len(_workers(proc)) == 2
    model = zoo.load_model("minionn-mnist")
    X, _ = zoo.load_dataset("minionn-mnist", "test")
    a = privinfer.connect("127.0.0.1", port, "plain")
    b = privinfer.connect("127.0.0.1", port, "plain")
    try:
        ref = run_reference(privinfer.compile_model(model), X[:3])
        for s in (a, b):
            np.testing.assert_allclose(s.infer(X[:3]), ref, atol=1e-4)
        # the supervisor handed the two sessions to different workers: each holds one client socket
        busy = [w for w in _workers(proc) if any(_tcp_peer_of(w, port))]
        assert len(busy) == 2, busy
    finally:
        a.close()
        b.close()


def _tcp_peer_of(pid: int, port: int):
    """Yields an inode for each TCP socket of `pid` (used to see which worker holds a session)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:"):
            inode = link[8:-1]
            with open("/proc/net/tcp") as f:
                for line in f.readlines()[1:]:
                    cols = line.split()
                    if cols[9] == inode and int(cols[1].split(":")[1], 16) == port and cols[3] == "01":
                        yield inode


def test_max_sessions_holds_across_workers(server):
    _, port = server
    held = [privinfer.connect("127.0.0.1", port, "plain") for _ in range(3)]
    try:
        with pytest.raises(ProtocolError, match="busy"):
            privinfer.connect("127.0.0.1", port, "plain")
    finally:
        for s in held:
            s.close()
    time.sleep(0.3)  # the workers report the sessions closed
    privinfer.connect("127.0.0.1", port, "plain").close()


def test_killed_worker_fails_its_session_typed_and_is_replaced(server):
    proc, port = server
    X, _ = zoo.load_dataset("minionn-mnist", "test")
    before = _workers(proc)
    s = privinfer.connect("127.0.0.1", port, "plain")
    s.infer(X[0])
    victim = next(w for w in before if any(_tcp_peer_of(w, port)))
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(PeerError, match="WorkerDied"):
        s.infer(X[0])
    end = time.monotonic() + 60
    while time.monotonic() < end and (len(_workers(proc)) < 2 or victim in _workers(proc)):
        time.sleep(0.2)
    after = _workers(proc)
    assert len(after) == 2 and victim not in after
    for _ in range(3):  # the replacement (and the survivor) serve new sessions
        with privinfer.connect("127.0.0.1", port, "plain", timeout=60) as t:
            assert t.infer(X[0]).shape == (10,)


def test_supervisor_refuses_bad_settings_before_starting_processes():
    from privinfer.errors import PrivinferError
    from privinfer.serving import Supervisor
    model = zoo.load_model("minionn-mnist")
    with pytest.raises(PrivinferError, match="no option"):
        Supervisor(model, "plain", workers=1, bogus=1)
    with pytest.raises(PrivinferError, match="workers"):
        Supervisor(model, "plain", workers=-1)


def test_a_protocols_start_up_warning_is_printed_once_not_per_worker(capfd):
    """`Server` prints a protocol's privacy warning when it starts; with N workers only the first says it (the
    others get QUIET_ENV), so an operator reads it once, not once per core."""
    from privinfer.serving.workers import QUIET_ENV, Supervisor, worker_env
    assert worker_env(0) is None and worker_env(1)[QUIET_ENV] == "1" and worker_env(3)[QUIET_ENV] == "1"
    import torch
    from torch import nn
    torch.manual_seed(0)
    m = nn.Sequential(nn.Flatten(), nn.Linear(16, 4))
    m.input_shape = (1, 4, 4)
    g = privinfer.compile_model(m, input_range=(0.0, 1.0))
    sup = Supervisor(g, "he", workers=2, flood_std=2.0 ** -40).start()  # a flood that cannot reach its target
    try:
        with privinfer.connect("127.0.0.1", sup.port, "he", timeout=60) as s:
            s.infer(np.zeros((1, 1, 4, 4)))  # both workers are up by now
    finally:
        sup.shutdown()
    assert capfd.readouterr().err.count("falls short of its 30-bit target") == 1


def test_sigterm_leaves_no_process_behind(server):  # last: ends the module's server
    proc, port = server
    family = descendants(proc.pid)
    assert len(family) >= 2
    s = privinfer.connect("127.0.0.1", port, "plain")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    with pytest.raises(ProtocolError):  # the open session ends with an error, not a hang
        s.infer(np.zeros((1, 28, 28)))
    end = time.monotonic() + 10
    while time.monotonic() < end and any(alive(p) for p in family):
        time.sleep(0.2)
    assert not [p for p in family if alive(p)]
