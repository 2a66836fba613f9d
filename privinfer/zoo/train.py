"""Deterministic training of the zoo networks on the offline digits data.

Shipped weights must be regenerable bit-for-bit by `privinfer zoo train NAME`, so training runs under
`deterministic()`: one intra-op thread (a reduction split over a different number of threads sums
in a different order, and the thread count differs between machines), deterministic algorithms,
a fixed seed for initialization and a private generator for batch order. The global RNG, thread
count and determinism flag are restored afterwards. In-process this is bit-for-bit on one machine;
AVX2 and AVX-512 kernels round differently, so `store.train_and_save` trains in a child process pinned
to baseline x86-64 code paths to make shipped weights reproducible across CPUs.

The x² networks (CryptoNets, SecureML, TenSEAL) can diverge since squares grow fast, so their
entries clip the gradient norm; inputs stay in [0, 1] and Adam's default lr is small enough.
"""
from __future__ import annotations

import contextlib
import time

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from .data import load_dataset
from .networks import build_network, get_info


@contextlib.contextmanager
def deterministic(seed: int):
    """Single-threaded, deterministic-algorithm torch with the global RNG seeded; all restored on exit."""
    threads = torch.get_num_threads()
    det = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=[]):
        try:
            torch.set_num_threads(1)
            torch.use_deterministic_algorithms(True)
            torch.manual_seed(seed)
            yield
        finally:
            torch.use_deterministic_algorithms(det, warn_only=warn_only)
            torch.set_num_threads(threads)


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray, batch: int = 512) -> float:
    """Top-1 accuracy of a torch model on numpy data."""
    was_training = model.training
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            out = model(torch.from_numpy(X[i:i + batch]).to(next(model.parameters()).dtype))
            correct += int((out.argmax(1).numpy() == y[i:i + batch]).sum())
    model.train(was_training)
    return correct / max(len(y), 1)


def train_network(name: str, epochs: int | None = None, seed: int = 0, progress: bool = True,
                  limit: int | None = None) -> tuple[nn.Module, float]:
    """Train zoo network `name` from scratch; returns (model in eval mode, test accuracy).

    `epochs` defaults to the entry's own; `limit` trains on the first `limit` samples only (tests).
    """
    from tqdm.auto import tqdm

    info = get_info(name)
    epochs = info.epochs if epochs is None else int(epochs)
    X_train, y_train = load_dataset(info.dataset, "train")
    X_test, y_test = load_dataset(info.dataset, "test")
    if limit is not None:
        X_train, y_train = X_train[:limit], y_train[:limit]
    if info.base is not None:
        return _finetune_from_base(info, epochs, seed, progress, (X_train, y_train), (X_test, y_test))
    Xt, yt = torch.from_numpy(X_train), torch.from_numpy(y_train)
    with deterministic(seed):
        model = build_network(name)
        gen = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(model.parameters(), lr=info.lr)
        bar = tqdm(range(epochs), desc=f"train {name}", disable=not progress, unit="epoch")
        start = time.perf_counter()
        for _ in bar:
            model.train()
            total, seen = 0.0, 0
            for idx in torch.randperm(len(yt), generator=gen).split(info.batch_size):
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(model(Xt[idx]), yt[idx])
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{name}: training diverged (loss {loss.item()})")
                loss.backward()
                if info.clip is not None:
                    nn.utils.clip_grad_norm_(model.parameters(), info.clip)
                opt.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            bar.set_postfix(loss=f"{total / seen:.4f}", secs=f"{time.perf_counter() - start:.0f}")
        model.eval()
        acc = accuracy(model, X_test, y_test)
    bar.close()
    return model, acc


def _finetune_from_base(info, epochs: int, seed: int, progress: bool, train, test) -> tuple[nn.Module, float]:
    """An HE-friendly zoo entry: its base network's trained weights, `make_he_friendly`, then `finetune`
    (deterministic like `train_network`)."""
    from ..model.approx import finetune, make_he_friendly
    from .store import load_torch_model
    with deterministic(seed):
        model = make_he_friendly(load_torch_model(info.base))
        model.input_shape, model.input_range = build_network(info.name).input_shape, (0.0, 1.0)
        finetune(model, train, epochs=epochs, lr=info.lr, progress=progress, batch_size=info.batch_size,
                 clip=info.clip, val=test, seed=seed)
        model.eval()
        acc = accuracy(model, *test)
    return model, acc
