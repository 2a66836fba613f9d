"""Torch modules for polynomial activations, so HE-friendly models stay ordinary torch models."""
from __future__ import annotations

import torch
from torch import nn


class PolyAct(nn.Module):
    """Elementwise polynomial sum_i c_i x^i (low degree first); compiles to ir.Poly."""

    def __init__(self, coeffs):
        super().__init__()
        self.register_buffer("coeffs", torch.as_tensor([float(c) for c in coeffs], dtype=torch.float32))

    def forward(self, x):
        out = torch.zeros_like(x) + self.coeffs[-1]
        for c in reversed(self.coeffs[:-1].tolist()):  # Horner
            out = out * x + c
        return out

    def extra_repr(self) -> str:
        return "coeffs=" + ", ".join(f"{c:.4g}" for c in self.coeffs.tolist())


class Square(nn.Module):
    """x², CryptoNets' activation; compiles to ir.Poly((0, 0, 1))."""

    def forward(self, x):
        return x * x
