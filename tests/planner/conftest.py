"""Planner tests count kernels into the planner's cache: give each test module a private one."""
import pytest


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("PRIVINFER_CACHE", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()
