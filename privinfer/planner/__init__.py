"""Plans: which protocol runs which layers (parsing and validation; choosing a plan is a later issue)."""
from .plan import PLAN_PROTOCOLS, Segment, layer_protocols, parse_plan, plan_string

__all__ = ["PLAN_PROTOCOLS", "Segment", "layer_protocols", "parse_plan", "plan_string"]
