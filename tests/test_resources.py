"""The bench's per-party sampler (privinfer/_resources.py) must not slow down what it measures: it reads the
costly PSS (smaps_rollup) of a party only when that party's RSS reaches a new high, and still records the peak."""
import os

import privinfer._resources as R


def test_pss_is_read_only_at_new_rss_highs(monkeypatch):
    rss = {"v": 100.0}
    reads = []
    monkeypatch.setattr(R, "_status", lambda pid: (rss["v"], rss["v"]))
    monkeypatch.setattr(R, "_pss", lambda pid, r: reads.append(pid) or r * 0.5)
    s = R.PartySampler()
    s._t0 = float("inf")  # only this process (not the children earlier tests left)
    for _ in range(5):  # steady memory: one PSS reading (the first sample), then only the cheap counters
        s.sample()
    assert reads == [os.getpid()]
    rss["v"] = 101.0  # under PSS_STEP: no new reading
    s.sample()
    assert len(reads) == 1
    rss["v"] = 150.0  # a new high: read again, and the peak follows it
    s.sample()
    assert len(reads) == 2
    s._self_cpu = 0.0
    assert s.result()["client"]["peak_rss_mb"] == 75.0  # the PSS read at the new high (own VmHWM not used)


def test_a_real_sample_reads_this_process():
    with R.PartySampler(interval=0.01) as s:
        s.sample()
    res = s.result()["client"]
    assert res is not None and res["peak_rss_mb"] > 1 and res["at_start_mb"] > 1
