"""The engine's traced rounds (privinfer/planner/engine_time.py, table._time_engine): pairing both parties' traces
into queries, the rounds' total slack, the slack per round every 2PC row is priced with, the child process's
failures (typed), and once (slow) the real thing."""
import os
import sys

import pytest
import torch

from privinfer.errors import TimeoutError_, WorkerDied
from privinfer.model import compile_model
from privinfer.planner import engine_time, table
from privinfer.planner.engine_time import read_traces, slack_total
from privinfer.planner.table import engine_slack_per_round


@pytest.fixture(scope="module")
def graph():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    return compile_model(net, (1, 4, 4), (0.0, 1.0))


def _write(folder, name, rows):
    (folder / name).write_text("".join(f"{k}\t{a:.7f}\t{b:.7f}\t{n}\n" for k, a, b, n in rows))


def test_traces_pair_into_queries_and_one_way_rounds_are_left_out(tmp_path):
    # one session, 3 queries (the first is the warm-up) of 2 rounds: an exchange, then a one-way reveal
    r0, r1, t = [], [], 100.0
    for q in range(3):
        r0 += [("x", t, t + 0.001 * (q + 1), 80), ("s", t + 0.01, t + 0.0101, 8)]
        r1 += [("x", t + 0.0002, t + 0.0005, 80), ("r", t + 0.01, t + 0.02, 8)]
        t += 1.0
    _write(tmp_path, "rank0-11.tsv", r0)
    _write(tmp_path, "rank1-12.tsv", r1)
    (session,) = read_traces(str(tmp_path), 3)
    assert len(session) == 2 and all(len(q) == 1 for q in session)  # warm-up and the one-way rounds left out
    assert session[0][0] == [pytest.approx(0.0003), 80]  # the late party's (smaller) wait
    assert slack_total(session, 0.0001, 0.0) == pytest.approx(0.0002)
    assert slack_total(session, 0.0001, 1e-5) == 0.0  # copy time above the floor is not slack; never negative
    assert slack_total([], 0.0, 0.0) is None
    assert read_traces(str(tmp_path), 4) is None  # 6 rounds are not whole queries of 4: no guess
    _write(tmp_path, "rank1-13.tsv", r1)  # an unpaired trace: no guess either
    assert read_traces(str(tmp_path), 3) is None


def test_every_2pc_row_is_priced_with_the_engines_slack_per_round(graph, cache, monkeypatch):
    """With an engine trace, every counted 2PC row carries the engine's slack per round, so a plan's rows add up
    to the query's rule (rounds x max(0, RTT - slack)); a failed or skipped timing falls back to the pieces."""
    import json
    from privinfer.planner.calibrate import load_calibration
    data = table.counts(graph)  # counted once for the module (the suite runs without the engine)
    assert data["engine"] == {"skipped": "PRIVINFER_PLANNER_ENGINE=0"} and engine_slack_per_round(data) is None
    monkeypatch.setenv("PRIVINFER_PLANNER_ENGINE", "1")
    fake = {"online_s": 0.02, "sessions": [0.02, 0.021], "kept": [0, 1], "samples": 8,
            "queries": [[[0.0011, 8], [0.0031, 8]], [[0.0011, 8], [0.0051, 8]]]}
    monkeypatch.setattr(engine_time, "time_engine", lambda g: json.loads(json.dumps(fake)))
    said = []
    eng = table._time_engine(graph, data["ss"], said.append)
    floor = data["ss"][0]["floor_s"] + 8 * data["ss"][0]["floor_s_per_byte"]  # the floor and 8 bytes' copy time
    totals = [max(0.0, 0.0011 - floor) + max(0.0, w - floor) for w in (0.0031, 0.0051)]
    assert eng["exchange_rounds"] == 2 and eng["slack_s"] == pytest.approx(sum(totals) / 2)
    assert "queries" not in eng  # the raw rounds are not cached
    withe = {**data, "engine": eng}
    s_bar = engine_slack_per_round(withe)
    assert s_bar == pytest.approx(eng["slack_s"] / 2)
    ss = [r for r in table.build_rows(graph, load_calibration(None, warn=False), withe)
          if r.protocol == "ss" and r.kind_in == r.kind_out == "shares"]
    assert ss and all(x == (s_bar,) for r in ss for x in r.cost.slack)
    assert not said
    # traces that do not fit the sessions the engine timed: no queries, and the reason goes on
    res = {k: v for k, v in fake.items() if k != "queries"}
    one = [[[[0.0011, 8], [0.0031, 8]]]]  # one session's traced queries, for the two sessions timed
    assert engine_time.attach_traces(dict(res), None)["untraced"].startswith("the parties' round traces")
    untraced = engine_time.attach_traces(dict(res), one)
    assert "queries" not in untraced and untraced["untraced"] == "1 traced session(s) for the 2 the engine timed"
    assert engine_time.attach_traces(dict(res), one * 2)["queries"] == one[0] * 2  # both sessions kept
    monkeypatch.setattr(engine_time, "time_engine", lambda g: dict(untraced))
    eng_u = table._time_engine(graph, data["ss"], said.append)
    assert engine_slack_per_round({"engine": eng_u}) is None and eng_u["online_s"] == 0.02  # the scale is kept
    assert said and "not traced (1 traced session(s) for the 2 the engine timed)" in said.pop()
    rtt = 0.004  # each row adds its exchange rounds x (RTT - slack) and a full RTT per other round
    for r in ss:
        assert r.cost.rounds_s(rtt) == pytest.approx(len(r.cost.slack) * (rtt - s_bar)
                                                      + (r.cost.rounds - len(r.cost.slack)) * rtt)

    def boom(g):
        raise WorkerDied("the child died")
    monkeypatch.setattr(engine_time, "time_engine", boom)
    eng = table._time_engine(graph, data["ss"], said.append)
    assert "WorkerDied" in eng["error"] and engine_slack_per_round({"engine": eng}) is None
    assert any("could not be timed" in m for m in said)
    path = table._cache_file(graph)
    path.write_text(json.dumps({**data, "engine": eng}))  # a cached failure is not paid again on every read
    monkeypatch.setattr(engine_time, "time_engine", lambda g: json.loads(json.dumps(fake)))
    assert "error" in table.counts(graph)["engine"]
    path.write_text(json.dumps(data))  # counts made with the engine off (the suite's) get it on the next read
    assert table.counts(graph)["engine"]["exchange_rounds"] == 2
    assert json.loads(path.read_text())["engine"]["exchange_rounds"] == 2


def test_a_child_that_fails_or_hangs_is_a_typed_error(graph, monkeypatch, tmp_path):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(WorkerDied, match="exit 1"):
        engine_time.time_engine(graph)
    script = tmp_path / "hang"
    script.write_text("#!/bin/sh\nsleep 30\n")
    script.chmod(0o700)
    monkeypatch.setattr(sys, "executable", str(script))
    with pytest.raises(TimeoutError_, match="did not finish"):
        engine_time.time_engine(graph, timeout=0.5)


@pytest.mark.slow  # ~15 s: two real ss sessions in a child process, after the pieces' counting
def test_the_real_engine_times_and_traces_the_whole_network(graph, monkeypatch, tmp_path):
    monkeypatch.setenv("PRIVINFER_CACHE", str(tmp_path))
    monkeypatch.setenv("PRIVINFER_PLANNER_ENGINE", "1")
    data = table.counts(graph, refresh=True)
    eng = data["engine"]
    assert len(eng["sessions"]) == 2 and eng["kept"] and 0 < eng["online_s"] < 5
    assert eng["slack_s"] is not None and eng["slack_s"] >= 0 and eng["exchange_rounds"] >= 1
    assert os.listdir(tmp_path / "planner" / "counts")  # cached
