"""Noise-aware training for the `noisy` protocol (ARDEN, Wang et al. KDD'18: train the cloud part on noisy data).

`train_noisy(model, split, data, epsilon, ...)` returns a `NoisyModel`: a privinfer Graph to serve, the
split index to serve it at, the privatizer it was trained for, and measured accuracies. Two shapes:

- `bottleneck=None`: the architecture is kept. The server suffix layers[split:] is fine-tuned on
  privatized prefix features (the prefix too with `train_prefix=True`).
- `bottleneck=d`: a learned low-dimensional head is appended to the *client's* prefix
  (Flatten -> Linear(F, hidden) -> ReLU -> Linear(hidden, d)) and the server suffix is replaced by
  Linear(d, hidden) -> ReLU -> Linear(hidden, classes). Head and server are trained end to end through
  the privatizer (the original prefix too with `train_prefix=True`). The deployed split moves after the
  head, and the client then holds (and runs) the head's weights as well.

Why the bottleneck: the clipped vector has L1 norm <= C spread over d coordinates while Laplace noise
of scale 2C/eps hits *every* coordinate, so the per-coordinate SNR is ~eps/(2d). With d = 2304 (minionn
after its first block) fine-tuning cannot help at any eps <= 20 (measured: chance). A learned 10-d code
concentrates the signal; it then tracks the accuracy of an ideal Laplace-coded classifier. No mechanism
can beat e^eps / (e^eps + k - 1) for k balanced classes (`privacy.ldp_accuracy_bound`).

Noise during training is a simulation on public data, so it uses a seeded torch generator (reproducible
results); the client's real privatization never does (see `privinfer.privacy.mechanisms`). Training
anneals the noise: during the first 40% of the epochs epsilon moves geometrically from max(50, 10 eps)
down to eps, which lets the heavily-noised models learn at all.

Results are cached as `save_graph` .npz + a .json sidecar in `$PRIVINFER_CACHE/noisy` or
`~/.cache/privinfer/noisy`, keyed by model, split, mechanism, epsilon, clip and the other settings.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from ...errors import PrivinferError
from ...model.ir import Graph, load_graph, save_graph
from ...privacy.mechanisms import PrivatizerConfig, epsilon_json, parse_epsilon
from ...privacy.torch_ops import torch_privatize
from ...model.compile import compile_model
from ...model.ir import graph_to_bytes
from ...model.torch_layers import graph_from_sequential as torch_to_graph
from ...model.torch_layers import sequential_from_graph as graph_to_torch
from ...model.torch_layers import torch_threads
from ...zoo import load_dataset as load_data
from ...zoo import load_model
from ...zoo.store import cache_root

CURRICULUM_FRACTION = 0.4
CURRICULUM_START = 50.0


def resolve_model(model) -> tuple[Graph, str]:
    """(Graph, identifier for cache keys) from a zoo name, a torch module or a Graph."""
    if isinstance(model, str):
        return load_model(model), model
    graph = compile_model(model)
    return graph, "graph-" + hashlib.sha256(graph_to_bytes(graph)).hexdigest()[:12]


@dataclass
class NoisyModel:
    """A model prepared for the noisy protocol: serve `graph` at `split` with this privatizer."""
    graph: Graph
    split: int
    epsilon: float
    mechanism: str = "laplace"
    clip: float | None = None
    nullify: float = 0.0
    delta: float = 0.0
    bottleneck: int | None = None
    meta: dict = field(default_factory=dict)
    path: str | None = None

    @property
    def config(self) -> PrivatizerConfig:
        return PrivatizerConfig(self.epsilon, self.mechanism, self.clip, self.nullify, self.delta)

    def session_options(self) -> dict:
        """Options for `PrivateSession(m.graph, "noisy", **m.session_options())` (same privatizer as trained)."""
        opts = {"split": self.split, "epsilon": epsilon_json(self.epsilon), "mechanism": self.mechanism,
                "nullify": self.nullify}
        if self.clip is not None:
            opts["clip"] = self.clip
        if self.mechanism != "laplace":
            opts["delta"] = self.delta
        return opts


def _key(model_id, split, cfg: PrivatizerConfig, clip_arg, **kw) -> str:
    parts = [model_id, f"split{split}", cfg.mechanism, f"eps{epsilon_json(cfg.epsilon)}",
             f"clip{'auto' if clip_arg is None else f'{clip_arg:g}'}", f"null{cfg.nullify:g}"]
    if cfg.mechanism != "laplace":
        parts.append(f"delta{cfg.delta:g}")
    parts += [f"{k}{v}" for k, v in sorted(kw.items())]
    return "_".join(str(p) for p in parts).replace("/", "-")


def default_clip(features: np.ndarray, mechanism: str, quantile: float = 0.5) -> float:
    """The `quantile` of the per-sample L1 (Laplace) or L2 (Gaussian) feature norms on public data."""
    f = features.reshape(len(features), -1)
    n = np.abs(f).sum(1) if mechanism == "laplace" else np.sqrt((f * f).sum(1))
    return float(np.quantile(n, quantile))


def public_clips(graph: Graph, split: int, data: str = "digits", quantile: float = 0.5) -> dict:
    """{"l1": C, "l2": C}: the median L1 / L2 norms of layers [0, split) outputs on a public train split.

    Used by a server to recommend a clip norm; {} when the data set cannot be loaded or does not fit.
    """
    from ...model.reference import run_reference
    try:
        X, _ = load_data(data, "train")
    except Exception:  # no zoo, unknown name: no recommendation
        return {}
    if X.shape[1:] != tuple(graph.input_shape):
        return {}
    f = run_reference(graph, X, stop=split)
    return {"l1": default_clip(f, "laplace", quantile), "l2": default_clip(f, "gaussian", quantile)}


def _eval(client: nn.Module, server: nn.Module, X: torch.Tensor, y: torch.Tensor, cfg: PrivatizerConfig,
          repeats: int, gen: torch.Generator) -> tuple[float, float]:
    """Mean and std over `repeats` noise draws of the test accuracy."""
    accs = []
    with torch.no_grad():
        feats = client(X)
        for _ in range(repeats if cfg.noisy or cfg.nullify else 1):
            out = server(torch_privatize(feats, cfg, gen).reshape(feats.shape))
            accs.append(float((out.argmax(1) == y).float().mean()))
    return float(np.mean(accs)), float(np.std(accs))


def train_noisy(model, split, data="digits", epsilon=1.0, *, mechanism: str = "laplace", delta: float = 0.0,
                clip: float | None = None, nullify: float = 0.0, bottleneck: int | None = None,
                hidden: int = 300, train_prefix: bool = False, epochs: int | None = None, lr: float | None = None,
                batch_size: int | None = None, seed: int = 0, eval_repeats: int = 5, progress: bool = True,
                cache: bool = True, limit: int | None = None) -> NoisyModel:
    """Fine-tune `model` (zoo name, torch module or Graph) for the noisy protocol split at `split`.

    `data` is a data set name (train split for training, test split for the reported accuracies) or a
    tuple (X_train, y_train[, X_test, y_test]). `clip=None` picks C: 1.0 with a bottleneck (its scale is
    learned), else the median feature norm on the training data. Defaults with a bottleneck: 150 epochs,
    lr 3e-3, batch 128 (measured best on digits among the settings tried); without: 30 epochs, lr 1e-3,
    batch 64 (fine-tuning pretrained layers). `limit` trains on the first `limit` samples (tests).
    """
    from tqdm.auto import tqdm

    eps = parse_epsilon(epsilon)
    if mechanism == "laplace":
        delta = 0.0
    elif not delta:
        delta = 1e-5
    graph, model_id = resolve_model(model)
    k = graph.index(split)
    if not 0 < k < len(graph):
        raise PrivinferError(f"split must leave at least one layer on each side (1..{len(graph) - 1}), got {split!r}")
    if bottleneck is not None and int(bottleneck) < 1:
        raise PrivinferError(f"bottleneck must be a positive width, got {bottleneck!r}")
    epochs = int(epochs if epochs is not None else (150 if bottleneck else 30))
    lr = float(lr if lr is not None else (3e-3 if bottleneck else 1e-3))
    batch_size = int(batch_size if batch_size is not None else (128 if bottleneck else 64))
    if isinstance(data, str):
        data_id = data
        X_tr, y_tr = load_data(data, "train")
        X_te, y_te = load_data(data, "test")
    else:
        data_id = "custom"
        X_tr, y_tr, *rest = data
        X_te, y_te = rest if rest else (X_tr, y_tr)
    if limit is not None:
        X_tr, y_tr, data_id = X_tr[:limit], y_tr[:limit], f"{data_id}{limit}"
    key = _key(model_id, k, PrivatizerConfig(eps, mechanism, 1.0, nullify, delta), clip, bn=bottleneck or 0,
               h=hidden if bottleneck else 0, tp=int(train_prefix), ep=epochs, lr=f"{lr:g}", bs=batch_size, seed=seed,
               data=data_id)
    path = cache_root() / "noisy" / f"{key}.npz"
    if cache and path.exists() and path.with_suffix(".json").exists():
        meta = json.loads(path.with_suffix(".json").read_text())
        return NoisyModel(load_graph(path), meta["split"], eps, mechanism, meta["clip"], nullify, delta,
                          bottleneck, meta, str(path))

    start = time.perf_counter()
    Xtr, ytr = torch.from_numpy(np.asarray(X_tr, np.float32)), torch.from_numpy(np.asarray(y_tr, np.int64))
    Xte, yte = torch.from_numpy(np.asarray(X_te, np.float32)), torch.from_numpy(np.asarray(y_te, np.int64))
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]), torch_threads():
        torch.manual_seed(seed)
        prefix, suffix = graph_to_torch(graph.slice(0, k)), graph_to_torch(graph.slice(k))
        feat_shape = graph.shapes[k]
        if bottleneck:
            d_in = int(np.prod(feat_shape))
            head_layers = ([nn.Flatten()] if len(feat_shape) > 1 else []) + [
                nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, int(bottleneck))]
            head = nn.Sequential(*head_layers)
            server = nn.Sequential(nn.Linear(int(bottleneck), hidden), nn.ReLU(),
                                   nn.Linear(hidden, int(np.prod(graph.output_shape))))
        else:
            head, server = nn.Sequential(), suffix
        client = nn.Sequential(prefix, head)
        with torch.no_grad():
            plain_acc = float((suffix(prefix(Xte)).argmax(1) == yte).float().mean())
            if clip is None:
                c = 1.0 if bottleneck else default_clip(client(Xtr).numpy(), mechanism)
            else:
                c = float(clip)
        cfg = PrivatizerConfig(eps, mechanism, c if (eps < math.inf or clip is not None) else None, nullify, delta)
        cfg_for = lambda e: PrivatizerConfig(e, mechanism, cfg.clip, nullify, delta)  # noqa: E731
        no_ft = _eval(client, suffix, Xte, yte, cfg, eval_repeats, gen) if not bottleneck else (None, None)

        # train: the frozen part of the prefix is precomputed once
        frozen = not train_prefix
        for p in prefix.parameters():
            p.requires_grad_(not frozen)
        with torch.no_grad():
            base_tr = prefix(Xtr) if frozen else None
        trainable = [p for p in list(client.parameters()) + list(server.parameters()) if p.requires_grad]
        opt = torch.optim.Adam(trainable, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        warm = int(CURRICULUM_FRACTION * epochs)
        start_eps = max(CURRICULUM_START, 10 * eps) if cfg.noisy else math.inf
        bar = tqdm(range(epochs), desc=f"noise-aware training eps={epsilon_json(eps)}", disable=not progress,
                   unit="epoch")
        for ep in bar:
            e = eps if (ep >= warm or not cfg.noisy) else start_eps * (eps / start_eps) ** (ep / max(warm, 1))
            scale = cfg_for(e).scale if cfg.noisy else 0.0
            client.train()
            server.train()
            total, seen = 0.0, 0
            for idx in torch.randperm(len(ytr), generator=gen).split(batch_size):
                opt.zero_grad(set_to_none=True)
                z = head(base_tr[idx]) if frozen else client(Xtr[idx])
                noisy = torch_privatize(z, cfg, gen, scale=scale).reshape(z.shape)
                loss = F.cross_entropy(server(noisy), ytr[idx])
                loss.backward()
                opt.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            sched.step()
            bar.set_postfix(loss=f"{total / seen:.3f}", eps=f"{e:.3g}")
        bar.close()
        client.eval()
        server.eval()
        ft = _eval(client, server, Xte, yte, cfg, eval_repeats, gen)
        ft_clean = _eval(client, server, Xte, yte, PrivatizerConfig(math.inf, mechanism, cfg.clip, 0.0,
                                                                    delta if mechanism != "laplace" else 0.0),
                         1, gen)

    # back to a privinfer Graph: prefix layers keep their names, new layers get noisy.* names
    pre = graph.slice(0, k)
    layers, names = list(pre.layers), list(pre.names)
    if frozen is False:
        g = torch_to_graph(prefix, graph.input_shape, pre.names)
        layers = list(g.layers)
    if bottleneck:
        hn = [f"noisy.head.{i}" for i in range(len(head_layers))]
        hg = torch_to_graph(head, feat_shape, hn)
        sn = ["noisy.server.0", "noisy.server.1", "noisy.server.2"]
        sg = torch_to_graph(server, hg.output_shape, sn)
        layers += list(hg.layers) + list(sg.layers)
        names += hn + sn
        split_out = k + len(hn)
    else:
        sg = torch_to_graph(server, feat_shape, graph.slice(k).names)
        layers += list(sg.layers)
        names += list(sg.names)
        split_out = k
    out_graph = Graph(graph.input_shape, tuple(layers), tuple(names), graph.input_range)
    meta = {"model": model_id, "split": split_out, "original_split": k, "mechanism": mechanism,
            "epsilon": epsilon_json(eps), "delta": delta, "clip": cfg.clip, "nullify": nullify,
            "bottleneck": bottleneck, "hidden": hidden if bottleneck else None, "train_prefix": train_prefix,
            "epochs": epochs, "lr": lr, "batch_size": batch_size, "seed": seed, "data": data_id,
            "accuracy_plain": round(plain_acc, 4),
            "accuracy_noisy_no_finetune": None if no_ft[0] is None else round(no_ft[0], 4),
            "accuracy_noisy_no_finetune_std": None if no_ft[1] is None else round(no_ft[1], 4),
            "accuracy_noisy_finetuned": round(ft[0], 4), "accuracy_noisy_finetuned_std": round(ft[1], 4),
            "accuracy_finetuned_without_noise": round(ft_clean[0], 4),
            "eval_repeats": eval_repeats, "train_seconds": round(time.perf_counter() - start, 1)}
    result = NoisyModel(out_graph, split_out, eps, mechanism, cfg.clip, nullify, delta, bottleneck, meta)
    if cache:  # atomic writes (unique temporaries, then rename): concurrent trainers cannot tear a file
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        save_graph(out_graph, buf)
        for target, data in ((path, buf.getvalue()), (path.with_suffix(".json"), (json.dumps(meta, indent=2) + "\n").encode())):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=target.name, suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        result.path = str(path)
    return result
