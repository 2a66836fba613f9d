"""The matrix's four plots, as PNG files (matplotlib, from the `dev` extra).

Why: trade-offs between protocols (time against traffic, network sensitivity, accuracy, the noise level)
read faster from a picture than from a 50-row table. Every axis names its unit; legends sit outside the
data; labels are short so that nothing overlaps at the default size.
"""
from __future__ import annotations

from pathlib import Path

from ..privacy import ldp_accuracy_bound
from .netmodel import SHAPED

MARKERS = "osD^vP*Xhp<>"


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _labels(records: list[dict]) -> list[str]:
    seen = []
    for r in records:
        if r.get("label") and r["label"] not in seen:
            seen.append(r["label"])
    return seen


def _total_bytes(r: dict) -> int:
    return r["bytes_client_to_server"] + r["bytes_server_to_client"] + r.get("bytes_dealer", 0)


def latency_vs_bytes(records: list[dict], path: Path) -> None:
    plt = _plt()
    loop = [r for r in records if r["network"] == "loopback"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    cmap = plt.get_cmap("tab10")
    for i, label in enumerate(_labels(loop)):
        rs = [r for r in loop if r["label"] == label]
        ax.scatter([max(_total_bytes(r), 1) / 1e6 for r in rs], [r["latency_s"]["median"] for r in rs],
                   label=label, marker=MARKERS[i % len(MARKERS)], color=cmap(i % 10), s=45, alpha=0.85)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("traffic per query, both directions + dealer (MB, log scale)")
    ax.set_ylabel("latency per query, median (s, log scale)")
    ax.set_title("Latency against traffic, every zoo network (loopback)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="protocol")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_by_profile(records: list[dict], path: Path) -> None:
    """Per protocol (its cheapest network with a shaped measurement, else its cheapest): loopback, then each
    profile modelled (hatched) and measured under tc (solid) where measured."""
    plt = _plt()
    loop = [r for r in records if r["network"] == "loopback" and "modelled_latency_s" in r]
    shaped = [r for r in records if r["network"] != "loopback"]
    picks = []
    for label in _labels(loop):
        rs = sorted((r for r in loop if r["label"] == label), key=lambda r: r["latency_s"]["median"])
        measured = [r for r in rs if any(s["label"] == label and s["model"] == r["model"] for s in shaped)]
        picks.append((measured or rs)[0])
    fig, ax = plt.subplots(figsize=(11, 5.5))
    per_profile = 2 if shaped else 1  # (modelled, measured) side by side, or modelled alone
    width = 0.8 / (1 + per_profile * len(SHAPED))
    cmap = plt.get_cmap("tab10")
    for j, r in enumerate(picks):
        bars = [("loopback, measured", r["latency_s"]["median"], 0, None)]
        for k, prof in enumerate(SHAPED, start=1):
            bars.append((f"{prof}, modelled", r["modelled_latency_s"][prof], k, "//"))
            m = next((s for s in shaped if s["label"] == r["label"] and s["model"] == r["model"]
                      and s["network"] == prof and _eps(s) == _eps(r)), None)
            if m is not None:
                bars.append((f"{prof}, measured (tc + delay line)", m["latency_s"]["median"], k, None))
        for n, (name, val, color, hatch) in enumerate(bars):
            slot = 0 if n == 0 else per_profile * color - (1 if hatch and per_profile == 2 else 0)
            ax.bar(j - 0.4 + width * (slot + 0.5), val, width, color=cmap(color), hatch=hatch,
                   edgecolor="black", linewidth=0.4, label=name if j == 0 or name not in _seen(ax) else None)
    ax.set_yscale("log")
    ax.set_xticks(range(len(picks)))
    ax.set_xticklabels([f"{r['label']}\n{r['model']}" for r in picks], fontsize=7, rotation=30, ha="right")
    ax.set_ylabel("latency per query, median (s, log scale)")
    from ..netem import PROFILES

    def _rate(mbit: float) -> str:
        return f"{mbit / 1000:g} Gbit/s" if mbit >= 1000 else f"{mbit:g} Mbit/s"
    ax.set_title("Latency per network profile (" + ", ".join(
        f"{p} {_rate(PROFILES[p].rate_mbit)} {PROFILES[p].rtt_ms:g} ms" for p in ("lan", "wan", "mobile")) + ")")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    uniq = dict(zip(labels, handles))
    ax.legend(uniq.values(), uniq.keys(), loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _seen(ax) -> set:
    return set(ax.get_legend_handles_labels()[1])


def _eps(r: dict):
    return (r.get("privacy") or {}).get("epsilon_per_query")


def accuracy_per_protocol(records: list[dict], path: Path) -> None:
    plt = _plt()
    loop = [r for r in records if r["network"] == "loopback"]
    labels = _labels(loop)
    models = sorted({r["model"] for r in loop})
    fig, ax = plt.subplots(figsize=(10, 5.5))
    cmap = plt.get_cmap("tab10")
    step = 0.7 / max(1, len(models))
    for m_i, model in enumerate(models):
        xs, ys, xp, yp = [], [], [], []
        for l_i, label in enumerate(labels):
            for r in (r for r in loop if r["label"] == label and r["model"] == model):
                x = l_i - 0.35 + step * (m_i + 0.5)
                xs.append(x)
                ys.append(100 * r["accuracy_private"])
                xp.append(x)
                yp.append(100 * r["accuracy_plain"])
        if xs:
            ax.scatter(xs, ys, color=cmap(m_i % 10), marker=MARKERS[m_i % len(MARKERS)], s=40, label=model)
            ax.scatter(xp, yp, color=cmap(m_i % 10), marker="_", s=400, linewidths=2)
    ax.scatter([], [], color="gray", marker="_", s=120, label="plaintext model, same images")
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, fontsize=8, rotation=25, ha="right")
    ax.set_ylabel("accuracy on the queried test images (%)")
    ax.set_ylim(0, 105)
    n = sorted({r["samples"] * r["batch"] for r in loop})
    ax.set_title(f"Private accuracy per protocol ({'/'.join(map(str, n))} images per row; dashes: plaintext)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, title="network")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def noisy_vs_epsilon(records: list[dict], path: Path, classes: int = 10) -> None:
    plt = _plt()
    noisy = [r for r in records if r["protocol"] == "noisy" and r["network"] == "loopback"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    grid = [0.05 * i for i in range(1, 261)]
    ax.plot(grid, [100 * ldp_accuracy_bound(e, classes) for e in grid], "k--", linewidth=1.2,
            label=f"local-DP bound e^ε/(e^ε+{classes - 1})")
    cmap = plt.get_cmap("tab10")
    for i, model in enumerate(sorted({r["model"] for r in noisy})):
        rs = sorted((r for r in noisy if r["model"] == model), key=_eps)
        eps = [float(_eps(r)) for r in rs]
        ax.plot(eps, [100 * r["accuracy_private"] for r in rs], marker=MARKERS[i % len(MARKERS)],
                color=cmap(i % 10), label=f"{model}, private")
        ax.plot(eps, [100 * r["accuracy_plain"] for r in rs], ":", color=cmap(i % 10), linewidth=1)
    if noisy:
        ax.plot([], [], "k:", linewidth=1, label="plaintext, same images")
    else:
        ax.text(6.5, 50, "no noisy records in this run", ha="center", color="gray")
    ax.set_xlabel("ε per query (local DP, Laplace)")
    ax.set_ylabel("accuracy on the queried test images (%)")
    ax.set_xlim(0, 13)
    ax.set_ylim(0, 105)
    n = sorted({r["samples"] * r["batch"] for r in noisy})
    ax.set_title("noisy: accuracy against ε" + (f" ({'/'.join(map(str, n))} images per point)" if n else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


PLOTS = {"latency_vs_bytes.png": latency_vs_bytes, "latency_by_profile.png": latency_by_profile,
         "accuracy_per_protocol.png": accuracy_per_protocol, "noisy_vs_epsilon.png": noisy_vs_epsilon}


def write_plots(records: list[dict], out: Path) -> list[Path]:
    paths = []
    for name, fn in PLOTS.items():
        fn(records, out / name)
        paths.append(out / name)
    return paths


