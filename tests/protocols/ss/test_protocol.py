"""The `ss` protocol (2PC on CrypTen with a dealer): correctness, offline/online accounting, failures.

Every session runs three CrypTen processes (server worker, client worker, dealer), so the tests share
sessions where they can. Failure tests kill one party with SIGKILL and check that the others report a
typed error within the timeout and that no `pi-ss-*` process is left behind (found through /proc, since
workers are forked by a fork server, not by the test process itself).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from torch import nn

from privinfer import PeerError, PrivateSession, PrivinferError, ProtocolError, compile_model, run_reference
from privinfer.model.ir import Graph, Linear, MaxPool2d, Poly, ReLU
from privinfer.protocols import get_protocol
from privinfer.protocols.ss.lowering import lower
from privinfer.protocols.ss.tuples import validate_plan
from privinfer.server import Server
from privinfer.session import connect
from privinfer.model.torch_layers import Square

TOL = 1e-2  # |logit - plaintext| with 16 fractional bits (observed ~1e-4)
MPC_TIMEOUT = 20.0


# --- helpers ----------------------------------------------------------------------------------------
def _comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as f:
            return f.read().strip()
    except OSError:
        return ""


def _ppid(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return -1


def ss_processes(root: int | None = None) -> dict[int, str]:
    """pid -> name of live `pi-ss-*` processes (descendants of `root` if given)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        pid = int(d)
        name = _comm(pid)
        if not name.startswith("pi-ss-"):
            continue
        if root is not None:
            p, seen = pid, 0
            while p > 1 and p != root and seen < 64:
                p, seen = _ppid(p), seen + 1
            if p != root:
                continue
        out[pid] = name
    return out


def wait_gone(pids, timeout: float = 15.0) -> list[int]:
    deadline = time.monotonic() + timeout
    left = list(pids)
    while left and time.monotonic() < deadline:
        left = [p for p in left if _comm(p).startswith("pi-ss-")]
        time.sleep(0.1)
    return left


def wait_for(pred, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.1)
    return pred()


def small_net() -> Graph:
    """Every layer kind: strided conv with one-sided padding, ReLU->MaxPool (rewritten), 3x3/2 max pool,
    avg pool with padding, x^2 and a cubic, flatten, linear."""
    torch.manual_seed(1)
    m = nn.Sequential(nn.ZeroPad2d((0, 1, 1, 0)), nn.Conv2d(1, 4, 3, stride=1), nn.ReLU(), nn.MaxPool2d(2),
                      nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(3, stride=2),
                      nn.Conv2d(6, 6, 1), Square(), nn.AvgPool2d(2, stride=1, padding=1),
                      nn.Flatten(), nn.Linear(6 * 4 * 4, 12), nn.ReLU(), nn.Linear(12, 5))
    g = compile_model(m, (1, 15, 15))
    layers = list(g.layers)
    layers.insert(len(layers) - 1, Poly((0.1, 0.5, 0.0, -0.05)))  # a cubic before the last linear
    # a constant logit just above a negative integer: CrypTen's own decoding would give -23.99985
    w = np.vstack([np.eye(5), np.zeros((1, 5))])
    layers.append(Linear(w, np.array([0, 0, 0, 0, 0, -22.99985])))
    return g.replace(layers)


def tiny_net() -> Graph:
    torch.manual_seed(2)
    m = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(3 * 3 * 3, 4))
    return compile_model(m, (1, 8, 8))


# --- no processes ---------------------------------------------------------------------------------
def test_lowering_swaps_relu_maxpool_only():
    g = small_net()
    kinds = [l.kind for l in lower(g)]
    assert kinds[:4] == ["conv2d", "maxpool2d", "relu", "conv2d"]
    assert kinds.count("relu") == 3 and kinds.count("maxpool2d") == 2
    x = np.random.default_rng(0).standard_normal((2, *g.input_shape))
    np.testing.assert_allclose(run_reference(g.replace(lower(g)), x), run_reference(g, x), atol=1e-12)
    assert isinstance(lower(g)[1], MaxPool2d) and isinstance(lower(g)[2], ReLU)


def test_options_and_plans_are_validated():
    cls = get_protocol("ss")
    with pytest.raises(PrivinferError, match="precision_bits"):
        cls.validate_client_options({"precision_bits": 0})
    with pytest.raises(PrivinferError, match="no client option"):
        cls.validate_client_options({"bogus": 1})
    with pytest.raises(PrivinferError, match="'local' or 'host:port'"):
        cls(tiny_net(), dealer="nohost")
    for bad in ([{"f": "os.system", "a": [], "k": {}, "o": []}], [{"f": "square", "a": [[1]], "k": {}, "o": [-1]}],
                [{"f": "generate_additive_triple", "a": [[1], [1], "eval"], "k": {}, "o": [1]}], {"f": 1}):
        with pytest.raises(ProtocolError):
            validate_plan(bad)


# --- correctness and accounting -----------------------------------------------------------------------
def test_logits_match_reference_and_online_phase_has_no_dealer_traffic():
    g = small_net()
    x = np.random.default_rng(3).uniform(-1, 1, (3, *g.input_shape))
    ref = run_reference(g, x)
    with PrivateSession(g, "ss", max_chunk=2, mpc_timeout=MPC_TIMEOUT) as s:   # one machine: the local dealer
        p = s.stats.privacy
        assert p["guarantee"] == "cryptographic-server-dealer" and p["input_private"] is False
        assert p["statement"] == "no input privacy against the server operator"
        assert s.stats.privacy["threat_model"].startswith("semi-honest")
        assert s.stats.privacy["fixed_point_bits"] == 16
        one = s.infer(x[0])
        assert one.shape == ref[0].shape and np.abs(one - ref[0]).max() < TOL
        assert abs(one[-1] + 22.99985) < 1e-4
        t = s.client.last
        assert t["online_dealer_messages"] == 0          # online: client <-> server only
        assert t["offline_dealer_messages"] == 2          # one plan out, one batch of tuples back
        assert t["offline_bytes_dealer_to_server"] > 0 and t["tuples"] > 0
        assert t["online_bytes_client_to_server"] > 0 and t["online_rounds"] > 0
        srv = t["server_online_comm"]                     # the server saw exactly the client's traffic
        assert srv["bytes_sent"] == t["online_bytes_server_to_client"]
        assert srv["bytes_received"] == t["online_bytes_client_to_server"]
        q = s.stats.last
        assert q.offline_s == pytest.approx(t["offline_s"]) and q.online_s == pytest.approx(t["online_s"])
        assert 0 < q.offline_s < q.latency_s and 0 < q.online_s < q.latency_s
        out = s.infer(x)                                  # batch of 3 in chunks of 2 and 1
        assert out.shape == ref.shape and np.abs(out - ref).max() < TOL
        assert s.client.last["chunks"] == 2 and s.client.last["online_dealer_messages"] == 0


# --- failures -----------------------------------------------------------------------------------------
def test_dead_dealer_after_offline_phase():
    """Material prepared in advance (prefetch): with the dealer killed, the prepared query still runs
    (its online phase needs no dealer); the next one fails with a clear error; the server goes on."""
    g = tiny_net()
    x = np.random.default_rng(4).uniform(0, 1, (1, *g.input_shape))
    srv = Server(g, "ss", dealer="local", mpc_timeout=MPC_TIMEOUT, timeout=60).start()
    try:
        s = connect("127.0.0.1", srv.port, "ss", prefetch=True)
        dealers = wait_for(lambda: [p for p, n in ss_processes(os.getpid()).items() if n == "pi-ss-dealer"])
        assert len(dealers) == 1
        os.kill(dealers[0], signal.SIGKILL)
        np.testing.assert_allclose(s.infer(x), run_reference(g, x), atol=TOL)
        t0 = time.monotonic()
        with pytest.raises(PeerError, match="dealer"):
            s.infer(x)
        assert time.monotonic() - t0 < MPC_TIMEOUT
        s.close()
        assert wait_gone(ss_processes(os.getpid())) == []
        with connect("127.0.0.1", srv.port, "ss") as s2:   # a new client gets a new dealer
            np.testing.assert_allclose(s2.infer(x), run_reference(g, x), atol=TOL)
        assert srv.failed >= 1 and srv.served >= 2
    finally:
        srv.shutdown()
    assert wait_gone(ss_processes(os.getpid())) == []


def _client_loop(port: int, conn) -> None:
    s = connect("127.0.0.1", port, "ss")
    x = np.zeros((1, *s.input_shape))
    while True:
        s.infer(x)
        conn.send("done")


@pytest.mark.slow  # the same kill is in tests/test_hardening.py (killed_client[ss]); 16 s
def test_dead_client():
    g = tiny_net()
    srv = Server(g, "ss", dealer="local", mpc_timeout=MPC_TIMEOUT, timeout=60).start()
    try:
        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_client_loop, args=(srv.port, child), daemon=True)
        p.start()
        assert parent.poll(120), "client never completed a query"
        parent.recv()
        client_side = list(ss_processes(p.pid))
        server_side = list(ss_processes(os.getpid()).keys() - set(client_side))
        assert len(client_side) == 1 and len(server_side) >= 2
        os.kill(p.pid, signal.SIGKILL)                   # mid-query or between queries
        p.join(10)
        assert wait_gone(server_side + client_side, MPC_TIMEOUT) == []   # server worker + dealer reaped
        assert wait_for(lambda: srv.failed >= 1)
        x = np.random.default_rng(5).uniform(0, 1, (2, *g.input_shape))
        with connect("127.0.0.1", srv.port, "ss") as s:   # the server goes on serving
            np.testing.assert_allclose(s.infer(x), run_reference(g, x), atol=TOL)
    finally:
        srv.shutdown()
    assert wait_gone(ss_processes(os.getpid())) == []


def test_dead_server():
    g = tiny_net()
    x = np.random.default_rng(6).uniform(0, 1, (1, *g.input_shape))
    s = PrivateSession(g, "ss", mpc_timeout=MPC_TIMEOUT)
    try:
        np.testing.assert_allclose(s.infer(x), run_reference(g, x), atol=TOL)
        server_pid = s._proc.pid
        server_side = list(ss_processes(server_pid))
        client_side = list(ss_processes(os.getpid()).keys() - set(server_side))
        assert len(server_side) == 2 and len(client_side) == 1
        os.kill(server_pid, signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(ProtocolError):
            s.infer(x)
        assert time.monotonic() - t0 < MPC_TIMEOUT
    finally:
        s.close()
    assert wait_gone(server_side + client_side) == []
    assert not [c for c in mp.active_children() if c.name.startswith("pi-ss-")]


def test_stalled_dealer_times_out():
    """A dealer that stops answering (SIGSTOP) fails the offline phase within mpc_timeout, typed."""
    g = tiny_net()
    x = np.zeros((1, *g.input_shape))
    srv = Server(g, "ss", dealer="local", mpc_timeout=4.0, timeout=60).start()
    try:
        with connect("127.0.0.1", srv.port, "ss") as s:
            s.infer(x)
            dealer = [p for p, n in ss_processes(os.getpid()).items() if n == "pi-ss-dealer"]
            assert len(dealer) == 1
            os.kill(dealer[0], signal.SIGSTOP)
            t0 = time.monotonic()
            with pytest.raises(PeerError, match="dealer.*(no answer|timed out)"):
                s.infer(x)
            assert time.monotonic() - t0 < 4.0 + 10.0
    finally:
        srv.shutdown()
    assert wait_gone(ss_processes(os.getpid())) == []   # the stopped dealer was killed, not left behind


def test_importing_the_package_starts_no_process():
    """The fork server preloads `privinfer.protocols.ss.preload`; if importing the package started a fork
    server, every fork server would start another one (a chain of processes that never ends)."""
    code = ("import os, time\nimport privinfer.protocols.ss.preload\ntime.sleep(1.0)\n"
            "from privinfer._process import descendants\nprint(len(descendants(os.getpid())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "0", out.stdout
