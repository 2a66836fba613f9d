"""Typed errors for malformed planner inputs (review findings): calibration tables with the wrong types or
non-finite timings, a calibration path that does not exist, policy switches spelled as strings, and options
that would override the plan the planner chose."""
import json

import pytest

from privinfer.errors import ParameterError
from privinfer.planner import auto
from privinfer.planner.calibrate import DEFAULTS, load_calibration, validate

GOOD = json.loads(DEFAULTS.read_text())


@pytest.mark.parametrize("mutate", [
    lambda t: t.update(he=[]),
    lambda t: t.update(ss=[]),
    lambda t: t["he"].update({"8192": 5}),
    lambda t: t["ss"].update(offline_fixed_s=float("nan")),
    lambda t: t["ss"].update(segment_overhead_s=-1.0),
    lambda t: t["he"][next(iter(t["he"]))].update(rotate=float("inf")),
    lambda t: t["bfv"].update(rotate="fast"),
])
def test_malformed_calibration_tables_are_typed_errors(mutate):
    table = json.loads(json.dumps(GOOD))
    mutate(table)
    with pytest.raises(ParameterError):
        validate(table, "test table")


def test_the_shipped_defaults_validate():
    validate(json.loads(DEFAULTS.read_text()), "defaults")


def test_a_named_calibration_file_that_is_missing_is_an_error(tmp_path):
    with pytest.raises(ParameterError, match="not found"):
        load_calibration(tmp_path / "typo.json")


@pytest.mark.parametrize("v,want", [(True, True), (False, False), ("false", False), ("No", False), ("1", True)])
def test_policy_switches_parse_strictly(v, want):
    pol, _ = auto.policy_from({"trusted_dealer": v, "model_private": v})
    assert pol.trusted_dealer is want and pol.model_private is want


def test_a_policy_switch_that_is_not_a_boolean_is_refused():
    with pytest.raises(ParameterError, match="true or false"):
        auto.policy_from({"model_private": "maybe"})
