"""Shared fixtures. Hypothesis runs a bounded number of examples so `make test` stays fast."""
import os

from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=int(os.environ.get("PRIVINFER_HYPOTHESIS_EXAMPLES", "40")),
                          deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("ci")
