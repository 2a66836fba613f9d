"""Model-inversion attack on noisy features: how much of the input does the server recover?

The attacker is the server (or anyone who sees the released features). It knows the client's prefix
(it sent it) and the privatizer's parameters (sent in HELLO), so it can simulate releases on public data:
it trains a decoder from privatized features back to the input on the public train split (fresh noise
every epoch), then reconstructs the *test* split from one privatized release per image. Reported:

- `mse`: mean squared error per pixel (inputs in [0, 1]), and `mse_baseline`: the error of always
  answering the mean training image (what a decoder that learned nothing gets);
- `ssim`: mean structural similarity (Wang, Bovik, Sheikh, Simoncelli 2004; Gaussian window sigma 1.5,
  K1 0.01, K2 0.03, data range 1 -- scikit-image's `gaussian_weights=True` settings; implemented here since
  scikit-image is not a dependency), and its mean-image baseline;
- `reid_top1`: re-identification, the fraction of test images whose reconstruction is nearer (L2) to
  the image itself than to any other test image; chance is 1 / n_test.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ..model.ir import Graph
from ..model.torch_layers import sequential_from_graph, torch_threads
from ..privacy.mechanisms import PrivatizerConfig, epsilon_json
from ..privacy.torch_ops import torch_privatize


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0, sigma: float = 1.5,
         k1: float = 0.01, k2: float = 0.03) -> np.ndarray:
    """Per-image mean SSIM of (N, H, W) or (N, 1, H, W) arrays (Gaussian-weighted, reflect padding,
    the (win-1)/2 border excluded from the mean, population covariances)."""
    from scipy.ndimage import gaussian_filter
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"ssim: shapes differ {a.shape} vs {b.shape}")
    if a.ndim == 4:
        if a.shape[1] != 1:
            raise ValueError("ssim: one channel expected")
        a, b = a[:, 0], b[:, 0]
    if a.ndim == 2:
        a, b = a[None], b[None]
    filt = lambda x: gaussian_filter(x, sigma=(0, sigma, sigma), mode="reflect", truncate=3.5)  # noqa: E731
    mu_a, mu_b = filt(a), filt(b)
    var_a = filt(a * a) - mu_a ** 2
    var_b = filt(b * b) - mu_b ** 2
    cov = filt(a * b) - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))
    pad = (2 * int(3.5 * sigma + 0.5) + 1 - 1) // 2
    return s[:, pad:-pad, pad:-pad].mean(axis=(1, 2))


def reidentification_top1(recon: np.ndarray, originals: np.ndarray) -> float:
    """Fraction of i with argmin_j ||recon_i - originals_j|| == i."""
    r = recon.reshape(len(recon), -1).astype(np.float64)
    o = originals.reshape(len(originals), -1).astype(np.float64)
    d = (r * r).sum(1)[:, None] - 2 * r @ o.T + (o * o).sum(1)[None, :]
    return float(np.mean(d.argmin(1) == np.arange(len(r))))


@dataclass
class InversionResult:
    epsilon: float | str
    mechanism: str
    mse: float
    ssim: float
    reid_top1: float
    mse_baseline: float
    ssim_baseline: float
    reid_chance: float
    n_train: int
    n_test: int
    feature_dim: int
    epochs: int

    def as_dict(self) -> dict:
        return asdict(self)


def _client_torch(client: Graph | nn.Module) -> nn.Module:
    if isinstance(client, Graph):
        return sequential_from_graph(client)
    return client


def inversion_attack(client: Graph | nn.Module, config: PrivatizerConfig, X_train: np.ndarray,
                     X_test: np.ndarray, *, epochs: int = 30, hidden: int = 512, lr: float = 1e-3,
                     batch_size: int = 64, seed: int = 0, progress: bool = False) -> InversionResult:
    """Train a decoder privatized-features -> input on X_train; measure reconstructions of X_test.

    `client` is what the client runs before privatizing (the prefix Graph, e.g. `graph.slice(0, split)`).
    """
    from tqdm.auto import tqdm
    Xtr = torch.from_numpy(np.asarray(X_train, np.float32))
    Xte = torch.from_numpy(np.asarray(X_test, np.float32))
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), torch_threads():
        torch.manual_seed(seed)
        net = _client_torch(client).eval()
        with torch.no_grad():
            ftr = net(Xtr).reshape(len(Xtr), -1)
            fte = net(Xte).reshape(len(Xte), -1)
        d, out = ftr.shape[1], int(np.prod(Xtr.shape[1:]))
        dec = nn.Sequential(nn.Linear(d, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                            nn.Linear(hidden, out))
        # standardize the decoder's input with statistics of simulated releases (noise can be huge)
        with torch.no_grad():
            sim = torch_privatize(ftr, config, gen)
            mu, sd = sim.mean(0, keepdim=True), sim.std(0, keepdim=True).clamp_min(1e-6)
        norm = lambda z: (z - mu) / sd  # noqa: E731
        opt = torch.optim.Adam(dec.parameters(), lr=lr)
        target = Xtr.reshape(len(Xtr), -1)
        for _ in tqdm(range(epochs), desc=f"inversion eps={epsilon_json(config.epsilon)}", disable=not progress):
            for idx in torch.randperm(len(Xtr), generator=gen).split(batch_size):
                opt.zero_grad(set_to_none=True)
                z = torch_privatize(ftr[idx], config, gen)
                loss = F.mse_loss(torch.sigmoid(dec(norm(z))), target[idx])
                loss.backward()
                opt.step()
        with torch.no_grad():
            rec = torch.sigmoid(dec(norm(torch_privatize(fte, config, gen)))).reshape(Xte.shape).numpy()
    xt = Xte.numpy()
    mean_img = np.broadcast_to(Xtr.numpy().mean(0, keepdims=True), xt.shape)
    return InversionResult(
        epsilon=epsilon_json(config.epsilon), mechanism=config.mechanism,
        mse=float(np.mean((rec - xt) ** 2)), ssim=float(np.mean(ssim(rec, xt))),
        reid_top1=reidentification_top1(rec, xt),
        mse_baseline=float(np.mean((mean_img - xt) ** 2)), ssim_baseline=float(np.mean(ssim(mean_img, xt))),
        reid_chance=1.0 / len(xt), n_train=len(Xtr), n_test=len(xt), feature_dim=int(d), epochs=epochs)

