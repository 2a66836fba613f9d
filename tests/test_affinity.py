"""Pinning the 2PC parties (privinfer/affinity.py): each party process found below the given roots by its
name, every thread of it on its rank's core; nothing else touched; a no-op below two cores."""
import os
import subprocess
import sys
import time

import pytest

from privinfer import affinity

# a child that names itself as a party would (protocols/ss/worker.child_setup), starts a second thread, waits
CHILD = r"""
import ctypes, sys, threading, time
ctypes.CDLL(None).prctl(15, sys.argv[1].encode(), 0, 0, 0)
threading.Thread(target=time.sleep, args=(30,), daemon=True).start()
print("ready", flush=True)
time.sleep(30)
"""


def _spawn(name):
    p = subprocess.Popen([sys.executable, "-c", CHILD, name], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def _thread_affinities(pid):
    return {tid: os.sched_getaffinity(int(tid)) for tid in os.listdir(f"/proc/{pid}/task")}


@pytest.mark.skipif(len(affinity.cores()) < 2 or not os.path.isdir("/proc/self/task"), reason="needs 2 cores, Linux")
def test_parties_are_pinned_apart_and_nothing_else():
    cs = affinity.cores()
    procs = {n: _spawn(n) for n in ("pi-ss-party0", "pi-ss-party1", "pi-ss-dealer")}
    try:
        done = affinity.pin_parties([os.getpid()])
        assert done == {"pi-ss-party0": cs[0], "pi-ss-party1": cs[1]}
        for name, rank in (("pi-ss-party0", 0), ("pi-ss-party1", 1)):
            aff = _thread_affinities(procs[name].pid)
            assert len(aff) >= 2 and all(a == {cs[rank]} for a in aff.values())  # every thread, not only the main one
        assert all(a == set(cs) for a in _thread_affinities(procs["pi-ss-dealer"].pid).values())
        assert set(cs) == set(os.sched_getaffinity(0))  # the caller keeps every core
    finally:
        for p in procs.values():
            p.kill()
            p.wait()


def test_nothing_is_pinned_below_two_cores(monkeypatch):
    monkeypatch.setattr(affinity, "cores", lambda: [0])
    assert affinity.core_for(0) is None and affinity.pin_self(1) is None
    assert affinity.pin_parties([os.getpid()]) == {}


def test_party_names_are_the_workers_names():
    """The names pinned are the ones the 2PC workers give themselves (ss, hybrid and the planner's counting)."""
    from privinfer.protocols.ss.worker import PROCESS_PREFIX
    roles = {"party0": 0, "party1": 1, "count0": 0, "count1": 1}
    assert {(PROCESS_PREFIX + r)[:15]: k for r, k in roles.items()} == affinity.PARTY_NAMES


def test_pinning_is_opt_in(monkeypatch):
    """A user's session is never pinned, so `privinfer bench` and the calibration measure free placement unless
    `--pin` (which sets the variable for the counting parties too) is given."""
    monkeypatch.delenv(affinity.ENV, raising=False)
    assert not affinity.enabled()
    monkeypatch.setenv(affinity.ENV, "1")
    assert affinity.enabled()
