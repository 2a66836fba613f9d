"""Attacks that measure what a protocol leaks (used by tests and benchmarks, never by the protocols)."""
from .inversion import InversionResult, inversion_attack, reidentification_top1, ssim

__all__ = ["InversionResult", "inversion_attack", "reidentification_top1", "ssim"]
