"""Planner tests count kernels into the planner's cache: give each test module a private one. The real engine's
whole-network timing (`table._time_engine`, two `ss` sessions in a child process, ~10 s) is off here
(PRIVINFER_PLANNER_ENGINE=0); `test_engine_time.py` runs it once (slow) and covers its plumbing fast."""
import pytest


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PRIVINFER_CACHE", str(tmp_path_factory.mktemp("cache")))
    mp.setenv("PRIVINFER_PLANNER_ENGINE", "0")
    yield
    mp.undo()
