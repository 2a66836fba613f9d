"""Calibration tables (privinfer/planner/calibrate.py): round trip, the missing-file fallback with its one
warning line, refusal of a malformed table, and a real (small) HE kernel timing."""
import json

import pytest

from privinfer.errors import ParameterError
from privinfer.planner import calibrate
from privinfer.planner.calibrate import DEFAULTS, load_calibration, save_calibration, time_he, validate


def test_round_trip(tmp_path):
    table = json.loads(DEFAULTS.read_text())
    table["he"]["8192"]["rotate"] = 0.123  # a value the defaults do not have
    path = save_calibration(table, tmp_path / "cal.json")
    back = load_calibration(path)
    assert back["source"] == str(path)
    assert {k: v for k, v in back.items() if k != "source"} == table


def test_missing_file_falls_back_with_one_warning(tmp_path, capsys, monkeypatch):
    """No `privinfer profile` run yet (nothing at the cache's default path): shipped defaults, one warning.
    A path the user names explicitly must exist (tests/planner/test_inputs.py)."""
    monkeypatch.setenv("PRIVINFER_CACHE", str(tmp_path / "nowhere"))
    table = load_calibration()
    assert table["source"] == "shipped defaults"
    assert table["he"] == json.loads(DEFAULTS.read_text())["he"]
    load_calibration()  # a second load says nothing more
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no calibration" in err[0] and "privinfer profile" in err[0]


def test_default_location_is_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PRIVINFER_CACHE", str(tmp_path))
    assert calibrate.calibration_path() == tmp_path / "planner" / "calibration.json"
    table = json.loads(DEFAULTS.read_text())
    save_calibration(table)
    assert load_calibration()["source"] == str(tmp_path / "planner" / "calibration.json")


@pytest.mark.parametrize("mutate", [
    lambda t: t.pop("he"),
    lambda t: t.update(version=99),
    lambda t: t["he"]["8192"].pop("rotate"),
    lambda t: t["ss"].pop("offline_fixed_s"),
    lambda t: t.update(cheetah=[]),
    lambda t: next(iter(t["cheetah"].values())).update(latency_s=float("nan")),
    lambda t: next(iter(t["cheetah"].values())).pop("rounds"),
])
def test_malformed_tables_are_refused(tmp_path, mutate):
    table = json.loads(DEFAULTS.read_text())
    mutate(table)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(table))
    with pytest.raises(ParameterError):
        load_calibration(p)
    p.write_text("{not json")
    with pytest.raises(ParameterError):
        load_calibration(p)


def test_he_kernels_are_timed():
    ops = time_he(4096, calibrate.RINGS[4096], reps=2)
    assert all(v > 0 for v in ops.values())
    validate({"version": calibrate.VERSION, "he": {"4096": ops}, "ss": json.loads(DEFAULTS.read_text())["ss"]}, "t")
    # a key switch (rotation) costs more than a plaintext addition on any machine
    assert ops["rotate"] > ops["add_plain"]


@pytest.mark.slow  # ~4 s: a real `ss` session (CrypTen parties); the table's checks are the fast tests above
def test_segment_overhead_is_a_real_empty_query():
    """The per-segment overhead is measured: the online time of a real `ss` query of a Flatten-only network."""
    from privinfer.planner.calibrate import time_segment_overhead
    empty = time_segment_overhead((1, 8, 8), samples=3)
    assert 0 < empty < 0.5
