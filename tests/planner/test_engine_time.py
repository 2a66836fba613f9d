"""The engine's traced rounds (privinfer/planner/engine_time.py): pairing both parties' traces into queries, the
rounds' total slack, and the scale `table.slack_scale` puts on the counted pieces' slack."""
import pytest

from privinfer.planner.engine_time import read_traces, slack_total
from privinfer.planner.table import slack_scale


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


def test_the_counted_slack_is_scaled_to_the_engines():
    data = {"ss": [{"piece": [0, 1], "slack": [[0.001, 0.002, 0.003]]},
                   {"piece": [1, 2], "slack": [[0.001, 0.000, 0.001]]},
                   {"piece": [0, 2], "slack": [[0.5, 0.5, 0.5]]}],  # the whole network's job: not the chain
            "engine": {"slack_s": 0.006}}
    assert slack_scale(data, None) == pytest.approx(3.0)  # the chain runs total 2, 2 and 4 ms: median 2 ms
    assert slack_scale({**data, "engine": {"slack_s": 1.0}}, None) == 4.0  # clamped
    assert slack_scale({**data, "engine": {"slack_s": None}}, None) == 1.0
    assert slack_scale({**data, "engine": {}}, None) == 1.0
