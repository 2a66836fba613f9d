"""Shared fixtures. Hypothesis runs a bounded number of examples so `make test` stays fast."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=int(os.environ.get("PRIVINFER_HYPOTHESIS_EXAMPLES", "40")),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")

# The planner's real-engine timing (two `ss` sessions per counted network, ~10 s) is off in the suite; the
# planner then prices from the counted pieces alone. `tests/planner/test_engine_time.py` runs it (slow) and covers
# its plumbing fast.
os.environ.setdefault("PRIVINFER_PLANNER_ENGINE", "0")
