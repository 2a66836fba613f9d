"""The privatizer in torch, for *simulation on public data*: noise-aware training and the inversion attack.

It applies exactly the same steps and scales as `mechanisms.Privatizer` (the noise scale comes from the same
`PrivatizerConfig.scale`), is differentiable through the clip (so a client prefix can be trained through the
noise), and draws its noise from a torch generator. It never privatizes a client's real input: that is
`mechanisms.Privatizer`, whose randomness is the OS CSPRNG.
"""
from __future__ import annotations

import torch

from .mechanisms import PrivatizerConfig


def torch_privatize(v: torch.Tensor, config: PrivatizerConfig, generator: torch.Generator | None = None,
                    scale: float | None = None) -> torch.Tensor:
    """(B, ...) -> (B, d) privatized features. `scale` overrides the noise scale (noise curricula)."""
    v = v.reshape(v.shape[0], -1)
    v = torch.where(torch.isfinite(v), v, torch.zeros_like(v))
    if config.nullify > 0:
        d = v.shape[1]
        m = int(round(config.nullify * d))
        if m > 0:
            keys = torch.rand(v.shape, generator=generator, dtype=v.dtype)
            drop = keys.argsort(dim=1)[:, :m]
            keep = torch.ones_like(v).scatter_(1, drop, 0.0)
            v = v * keep
    if config.clip is not None:
        if config.norm == "l1":
            n = v.abs().sum(dim=1, keepdim=True)
        else:
            n = v.pow(2).sum(dim=1, keepdim=True).sqrt()
        v = v * torch.clamp(config.clip / n.clamp_min(1e-30), max=1.0)
    s = config.scale if scale is None else float(scale)
    if s > 0:
        # uniforms in float64 on an open interval: a float32 uniform can be exactly 0, giving infinite noise
        if config.mechanism == "laplace":
            u = torch.rand(v.shape, generator=generator, dtype=torch.float64).clamp(1e-12, 1 - 1e-12) - 0.5
            noise = -s * torch.sign(u) * torch.log1p(-2.0 * u.abs())
        else:
            noise = s * torch.randn(v.shape, generator=generator, dtype=torch.float64)
        v = v + noise.to(v.dtype)
    return v
