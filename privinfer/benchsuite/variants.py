"""The graphs and options a matrix case serves: zoo weights, HE-friendly rewrites, noisy fine-tunes.

Why: some rows need a model that differs from the zoo's. `he` cannot run ReLU or max pool, so a ReLU
network is benchmarked under `he` as its HE-friendly variant (`privinfer.model.approx.make_he_friendly`:
ReLU -> x², max pool -> average pool, then a short fine-tune), labelled as such in every record. `noisy`
serves a model fine-tuned for its noise level (`train_noisy`, the ARDEN setting). Both are cached, so a
second run of the matrix trains nothing.
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import zoo
from ..model.ir import Graph, load_graph, save_graph
from ..zoo.store import cache_dir
from .cases import Case, architecture, noisy_split

HE_FRIENDLY_EPOCHS = 3
HE_FRIENDLY_LR = 1e-3


def he_friendly(name: str) -> tuple[Graph, dict]:
    """(graph, description) of zoo network `name` with x² activations and average pools, fine-tuned."""
    path = cache_dir().parent / "benchsuite" / f"{name}-he-friendly-x2-ep{HE_FRIENDLY_EPOCHS}.npz"
    meta_path = path.with_suffix(".json")
    if path.exists() and meta_path.exists():
        return load_graph(path), json.loads(meta_path.read_text())
    from ..model.approx import finetune, make_he_friendly
    from ..model.compile import compile_model
    info = zoo.NETWORKS[name]
    model = make_he_friendly(zoo.load_torch_model(name), "square")
    report = finetune(model, zoo.load_dataset(name, "train"), epochs=HE_FRIENDLY_EPOCHS, lr=HE_FRIENDLY_LR,
                      progress=False, clip=1.0, val=zoo.load_dataset(name, "test"))
    graph = compile_model(model, info.builder().input_shape, zoo.networks.INPUT_RANGE)
    meta = {"variant": "he-friendly", "of": name, "activation": "x²", "pools": "max -> average",
            "finetune_epochs": HE_FRIENDLY_EPOCHS, "accuracy_before_finetune": round(report["accuracy_before"], 4),
            "accuracy_after_finetune": round(report["accuracy_after"], 4)}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_graph(graph, str(path))
    meta_path.write_text(json.dumps(meta, indent=1))
    return graph, meta


def prepare(case: Case) -> tuple[Graph | None, dict, dict]:
    """(graph to serve or None for the zoo's, session options, extra record fields) for one case."""
    opts, extra = dict(case.options), {"label": case.rule.label}
    if case.variant == "he-friendly":
        graph, meta = he_friendly(case.model)
        extra["model_variant"] = meta
        return graph, opts, extra
    if case.rule.protocol == "noisy":
        from ..protocols.noisy.train import train_noisy
        split = noisy_split(architecture(case.model))
        m = train_noisy(case.model, split, zoo.NETWORKS[case.model].dataset, case.epsilon, bottleneck=10,
                        progress=False)
        extra["noisy_training"] = {k: m.meta.get(k) for k in ("original_split", "epochs", "bottleneck",
                                                               "accuracy_noisy_finetuned", "train_seconds")}
        return m.graph, {**m.session_options(), **opts}, extra
    return None, opts, extra


def variant_path_for_tests(name: str) -> Path:  # where he_friendly caches (tests clean it up)
    return cache_dir().parent / "benchsuite" / f"{name}-he-friendly-x2-ep{HE_FRIENDLY_EPOCHS}.npz"
