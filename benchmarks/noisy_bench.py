"""Noisy feature offloading on minionn-mnist / digits: accuracy, leakage and latency against epsilon.

    .venv/bin/python benchmarks/noisy_bench.py --epsilon 0.1 0.5 1 2 5 10 inf

For each epsilon (Laplace by default, one release per test image):
- accuracy of the original model split after the first conv block (layers [0, 3): 16x12x12 = 2304 features)
  without fine-tuning, and with the server suffix fine-tuned on privatized features (ARDEN);
- accuracy with a learned 10-d bottleneck head in the client prefix, trained end to end through the noise,
  measured through the real protocol (PrivateSession, OS-entropy noise) on the whole test split;
- the upper bound e^eps / (e^eps + 9) (times the class-imbalance factor) that *any* epsilon-LDP release
  allows for 10 classes;
- the inversion attack (decoder trained on the public train split) on both feature kinds: MSE, SSIM,
  re-identification top-1.
Latency: batch-1 queries through a server in its own process, noisy vs the `plain` protocol and vs a
noise-free split, same model, same channel. Writes noisy_bench.{json,md,png} into benchmarks/results/.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import privinfer  # noqa: E402
from privinfer import zoo  # noqa: E402
from privinfer.attacks import inversion_attack  # noqa: E402
from privinfer.privacy import PrivatizerConfig, epsilon_json, ldp_accuracy_bound, parse_epsilon  # noqa: E402
from privinfer.protocols.noisy import train_noisy  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def protocol_accuracy(graph, opts, X, y, batch=50, passes=3):
    """Accuracy through the real protocol (thread server, OS-entropy noise): mean over `passes` passes
    over the test split, one release per image per pass (the privacy record is the first pass's)."""
    accs, privacy = [], None
    for _ in range(passes):
        preds = []
        with privinfer.PrivateSession(graph, "noisy", spawn="thread", **opts) as s:
            for i in range(0, len(X), batch):
                preds.append(s.infer(X[i:i + batch]).argmax(1))
            privacy = privacy or s.stats.privacy
        accs.append(float(np.mean(np.concatenate(preds) == y)))
    return float(np.mean(accs)), float(np.std(accs)), privacy


def latency(graph, protocol, opts, X, queries):
    """Median/p25/p75 latency and per-query bytes of batch-1 queries, server in its own process."""
    lat, up, down = [], [], []
    with privinfer.PrivateSession(graph, protocol, **opts) as s:
        for i in range(queries + 5):
            s.infer(X[i % len(X)])
            q = s.stats.last
            if i >= 5:
                lat.append(q.latency_s)
                up.append(q.bytes_client_to_server)
                down.append(q.bytes_server_to_client)
        setup = s.stats.setup_bytes
    p25, med, p75 = np.percentile(lat, [25, 50, 75])
    return {"median": float(med), "p25": float(p25), "p75": float(p75), "up": int(statistics.median(up)),
            "down": int(statistics.median(down)), "setup_bytes": int(setup)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epsilon", nargs="+", default=["0.1", "0.5", "1", "2", "5", "10", "inf"])
    ap.add_argument("--mechanism", default="laplace", choices=["laplace", "gaussian"])
    ap.add_argument("--delta", type=float, default=1e-5)
    ap.add_argument("--model", default="minionn-mnist")
    ap.add_argument("--split", default=3, type=int)
    ap.add_argument("--bottleneck", default=10, type=int)
    ap.add_argument("--nullify", default=0.0, type=float)
    ap.add_argument("--ft-epochs", default=10, type=int, help="fine-tuning epochs without a bottleneck")
    ap.add_argument("--bn-epochs", default=150, type=int, help="training epochs with the bottleneck")
    ap.add_argument("--attack-epochs", default=30, type=int)
    ap.add_argument("--queries", default=100, type=int, help="batch-1 queries per latency measurement")
    ap.add_argument("--latency-epsilon", default=1.0, type=float)
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--name", default="noisy_bench")
    a = ap.parse_args(argv)
    eps_list = [parse_epsilon(e) for e in a.epsilon]
    delta = a.delta if a.mechanism == "gaussian" else 0.0
    graph = zoo.load_model(a.model)
    Xtr, _ = zoo.load_dataset(a.model, "train")
    X, y = zoo.load_dataset(a.model, "test")
    acc_plain = float(np.mean(privinfer.run_reference(graph, X).argmax(1) == y))
    pmax = float(np.bincount(y).max() / len(y))
    rows = []
    for eps in eps_list:
        t0 = time.perf_counter()
        full = train_noisy(a.model, a.split, "digits", eps, mechanism=a.mechanism, delta=delta, nullify=a.nullify,
                           epochs=a.ft_epochs)
        bn = train_noisy(a.model, a.split, "digits", eps, mechanism=a.mechanism, delta=delta, nullify=a.nullify,
                         bottleneck=a.bottleneck, epochs=a.bn_epochs)
        acc_bn, acc_bn_std, privacy = protocol_accuracy(bn.graph, bn.session_options(), X, y)
        cfg_full = PrivatizerConfig(eps, a.mechanism, full.clip, a.nullify, delta)
        att_full = inversion_attack(graph.slice(0, a.split), cfg_full, Xtr, X, epochs=a.attack_epochs).as_dict()
        att_bn = inversion_attack(bn.graph.slice(0, bn.split), bn.config, Xtr, X, epochs=a.attack_epochs).as_dict()
        row = {"epsilon": epsilon_json(eps), "mechanism": a.mechanism, "delta": delta, "nullify": a.nullify,
               "accuracy_plain": acc_plain,
               "accuracy_no_finetune": full.meta["accuracy_noisy_no_finetune"],
               "accuracy_finetuned_full": full.meta["accuracy_noisy_finetuned"],
               "accuracy_bottleneck_sim": bn.meta["accuracy_noisy_finetuned"],
               "accuracy_bottleneck_sim_std": bn.meta["accuracy_noisy_finetuned_std"],
               "accuracy_bottleneck_protocol": acc_bn, "accuracy_bottleneck_protocol_std": acc_bn_std,
               "accuracy_ldp_bound": ldp_accuracy_bound(eps, 10, pmax, delta),
               "clip_full": full.clip, "clip_bottleneck": bn.clip,
               "inversion_full": att_full, "inversion_bottleneck": att_bn, "privacy": privacy,
               "seconds": round(time.perf_counter() - t0, 1)}
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if not isinstance(v, dict)}), flush=True)

    # latency: same model, same channel; noise-free split and plain as baselines
    le = a.latency_epsilon
    bn = train_noisy(a.model, a.split, "digits", le, mechanism=a.mechanism, delta=delta, nullify=a.nullify,
                     bottleneck=a.bottleneck, epochs=a.bn_epochs)
    full = train_noisy(a.model, a.split, "digits", le, mechanism=a.mechanism, delta=delta, nullify=a.nullify,
                       epochs=a.ft_epochs)
    extra = {"delta": delta} if a.mechanism == "gaussian" else {}
    lat = {
        "plain": latency(graph, "plain", {}, X, a.queries),
        "split_no_noise": latency(graph, "noisy", {"split": a.split, "epsilon": "inf"}, X, a.queries),
        "noisy_full": latency(full.graph, "noisy", full.session_options(), X, a.queries),
        "noisy_bottleneck": latency(bn.graph, "noisy", bn.session_options(), X, a.queries),
    }
    for k in ("noisy_full", "noisy_bottleneck", "split_no_noise"):
        lat[k]["ratio_vs_plain"] = lat[k]["median"] / lat["plain"]["median"]
        lat[k]["ratio_vs_split_no_noise"] = lat[k]["median"] / lat["split_no_noise"]["median"]
    result = {"model": a.model, "split": a.split, "bottleneck": a.bottleneck, "mechanism": a.mechanism,
              "test_images": len(y), "latency_epsilon": le, "rows": rows, "latency": lat,
              "settings": {**vars(a), **extra}}
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{a.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{a.name}.md").write_text(table(result) + "\n")
    plot(result, out / f"{a.name}.png")
    print(table(result))


def _f(v, nd=3):
    return "—" if v is None else f"{v:.{nd}f}"


def table(r: dict) -> str:
    lines = [f"### noisy offloading, {r['model']}, split {r['split']} ({r['mechanism']}), digits test split "
             f"({r['test_images']} images)", "",
             "| ε | acc no FT | acc FT (2304-d) | acc bottleneck (protocol) | LDP bound | "
             "inversion MSE 2304-d / bottleneck | SSIM 2304-d / bottleneck | re-id top-1 2304-d / bottleneck |",
             "|---|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        f, b = row["inversion_full"], row["inversion_bottleneck"]
        lines.append(f"| {row['epsilon']} | {_f(row['accuracy_no_finetune'])} | {_f(row['accuracy_finetuned_full'])} "
                     f"| {_f(row['accuracy_bottleneck_protocol'])} | {_f(row['accuracy_ldp_bound'])} "
                     f"| {f['mse']:.4f} / {b['mse']:.4f} | {f['ssim']:.3f} / {b['ssim']:.3f} "
                     f"| {f['reid_top1']:.3f} / {b['reid_top1']:.3f} |")
    r0 = r["rows"][0]["inversion_full"]
    lines += ["", f"Plaintext accuracy {r['rows'][0]['accuracy_plain']:.3f}. Inversion baselines (mean training image): "
              f"MSE {r0['mse_baseline']:.4f}, SSIM {r0['ssim_baseline']:.3f}; re-id chance {r0['reid_chance']:.4f}.",
              "", f"Latency, batch 1, server in its own process, loopback TCP (ε = {r['latency_epsilon']}):", "",
              "| configuration | median (p25–p75) ms | ×plain | ×noise-free split | up B | down B | setup B |",
              "|---|---|---|---|---|---|---|"]
    for k, v in r["latency"].items():
        lines.append(f"| {k} | {v['median'] * 1e3:.2f} ({v['p25'] * 1e3:.2f}–{v['p75'] * 1e3:.2f}) "
                     f"| {v.get('ratio_vs_plain', 1.0):.2f} | {_f(v.get('ratio_vs_split_no_noise'), 2)} "
                     f"| {v['up']} | {v['down']} | {v['setup_bytes']} |")
    return "\n".join(lines)


def plot(r: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    rows = r["rows"]
    labels = ["∞" if row["epsilon"] == "inf" else f"{row['epsilon']:g}" for row in rows]
    x = np.arange(len(rows))
    get = lambda k: np.array([np.nan if row[k] is None else row[k] for row in rows], dtype=float)  # noqa: E731
    fig, ax = plt.subplots(1, 3, figsize=(16, 6.2))
    a = ax[0]
    plain = rows[0]["accuracy_plain"]
    a.axhline(plain, color="k", lw=1, label=f"plaintext ({plain:.3f})")
    a.axhline(plain - 0.03, color="k", lw=1, ls=":", label="plaintext − 3 points (target)")
    a.plot(x, get("accuracy_ldp_bound"), "k--", label="upper bound, any ε-LDP release" if r["mechanism"] == "laplace" else "upper bound, any (ε, δ)-LDP release")
    a.plot(x, get("accuracy_no_finetune"), "o-", color="C0", label="2304-d features, no fine-tuning")
    a.plot(x, get("accuracy_finetuned_full"), "s--", color="C1", mfc="none", ms=9,
           label="2304-d features, suffix fine-tuned")
    a.plot(x, get("accuracy_bottleneck_protocol"), "D-", lw=2, color="C2",
           label=f"{r['bottleneck']}-d learned bottleneck, fine-tuned (via protocol)")
    a.axhline(0.1, color="grey", lw=0.8, ls="-.", label="chance")
    a.set(title="test accuracy vs ε per query", xlabel="ε per image (categorical axis)", ylabel="accuracy", ylim=(0, 1.02))
    a.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    for k, (key, title, base_key, base_label) in enumerate(
            [("mse", "inversion: reconstruction MSE (lower = more leakage)", "mse_baseline", "mean training image"),
             ("reid_top1", "inversion: re-identification top-1", "reid_chance", "chance")], start=1):
        a = ax[k]
        a.axhline(rows[0]["inversion_full"][base_key], color="grey", ls="--", label=base_label)
        for kind, mark, lab, style in (
                ("inversion_bottleneck", "D-", f"{r['bottleneck']}-d bottleneck", dict(color="C2", lw=2)),
                ("inversion_full", "s--", "2304-d features", dict(color="C1", mfc="none", ms=9))):
            a.plot(x, [row[kind][key] for row in rows], mark, label=lab, **style)
        a.set(title=title, xlabel="ε per image (categorical axis)")
        a.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3)
    for a in ax:
        a.set_xticks(x, labels)
        a.grid(alpha=0.3)
    fig.suptitle(f"noisy offloading: {r['model']}, client runs layers [0, {r['split']}) (+ bottleneck head), "
                 f"{r['mechanism']} noise, one release per test image (digits test split, {r['test_images']} images)",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
