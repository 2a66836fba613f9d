"""Regenerate the README's generated blocks: the benchmark matrix (its command, machine, headline table,
two plots, peers and published figures, from `benchmarks/results/matrix/`, which `privinfer bench --matrix
default --out benchmarks/results/matrix` writes) and the local-DP accuracy bounds (from
`privinfer.privacy.ldp_accuracy_bound`). Without a matrix run the table falls back to the older per-protocol
JSON files.

Why: figures typed by hand drift from what the code computes (the README once said 23.7 % where the bound is
23.2 %). Each block sits between `<!-- generated:NAME -->` and `<!-- /generated:NAME -->`.

    python benchmarks/readme_table.py            # print the benchmark table
    python benchmarks/readme_table.py --write    # rewrite README.md's generated blocks in place
    python benchmarks/readme_table.py --check    # exit 1 if README.md differs from what would be written
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from privinfer.bench import format_table
from privinfer.benchsuite.report import peers_table, published_table, summary_table
from privinfer.privacy import ldp_accuracy_bound

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
MATRIX = RESULTS / "matrix"
PLOTS = (("latency_vs_bytes.png", "latency against traffic per query, every protocol and zoo network (log-log)"),
         ("latency_by_profile.png", "latency per network profile: loopback measured, lan/wan/mobile modelled and "
                                    "measured under tc shaping"))
TABLE_FILES = ["plain.json", "he_latency.json", "he_latency_fast.json", "he_batch_records.json", "ss_records.json", "cheetah.json",
               "noisy_records.json"]
BOUND_EPSILONS = (1, 2, 5, 10)


def _matrix() -> tuple[dict, list[dict]] | None:
    if not (MATRIX / "records.json").exists() or not (MATRIX / "suite.json").exists():
        return None
    return json.loads((MATRIX / "suite.json").read_text()), json.loads((MATRIX / "records.json").read_text())


def matrix_head() -> str:
    m = _matrix()
    if m is None:
        return "No matrix run yet: `privinfer bench --matrix default --out benchmarks/results/matrix`."
    suite, records = m
    mach = suite["machine"]
    return (f"Generated from `benchmarks/results/matrix/` (`{suite['command']}`: {suite['records']} records, "
            f"{len(suite['failed'])} failed ({'; '.join(f['case'] for f in suite['failed']) or 'none'}), "
            f"{len(suite['skipped'])} not applicable, wall time "
            f"{suite['wall_s'] / 60:.1f} min) on {mach['cores']} cores, {mach['cpu']}. Loopback TCP, client and "
            f"server in separate processes; {suite['network_note']}. Latency: median per query; traffic: up + "
            f"down + dealer bytes per query; accuracy: private and plaintext on the same queried images (count in "
            f"brackets); CPU seconds and peak memory (PSS) per party, child processes included (the client is the "
            f"benchmark process itself, so its memory includes the heap left by earlier cases). For `ss`, traffic "
            f"includes the CrypTen (gloo) traffic and the dealer's. All fields, the "
            f"network model and its error: `benchmarks/results/matrix/matrix.md`.")


def matrix_plots() -> str:
    if _matrix() is None:
        return "(plots appear after a matrix run)"
    return "\n".join(f"![{alt}](benchmarks/results/matrix/{name})" for name, alt in PLOTS)


def matrix_peers() -> str:
    m = _matrix()
    if m is None:
        return "(peers appear after a matrix run)"
    suite, _ = m
    return (peers_table(suite.get("peers", [])) + "\n\nPublished figures, never mixed with our measurements:\n\n"
            + published_table(suite.get("published", [])))


def bench_table(files=TABLE_FILES) -> str:
    m = _matrix()
    if m is not None:
        return summary_table(m[1])
    records = []
    for name in files:
        path = RESULTS / name
        if path.exists():
            records += json.loads(path.read_text())
    return format_table(records)


def ldp_bounds(classes: int = 10) -> str:
    cells = "; ".join(f"{100 * ldp_accuracy_bound(e, classes):.4g} % at ε={e}" for e in BOUND_EPSILONS)
    return (f"No ε-local-DP release can give more than e^ε/(e^ε+{classes - 1}) accuracy on {classes} balanced "
            f"classes (`privinfer.privacy.ldp_accuracy_bound`): {cells}.")


BLOCKS = {"bench-matrix-head": matrix_head, "bench-table": bench_table, "bench-plots": matrix_plots,
          "bench-peers": matrix_peers, "ldp-bound": ldp_bounds}


def render(text: str) -> str:
    for name, make in BLOCKS.items():
        pattern = re.compile(rf"(<!-- generated:{name} -->\n).*?(\n<!-- /generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no generated block {name!r}")
        body = make()
        text = pattern.sub(lambda m: m.group(1) + body + m.group(2), text)
    return text


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="rewrite README.md's generated blocks")
    ap.add_argument("--check", action="store_true", help="fail if README.md's generated blocks are stale")
    args = ap.parse_args(argv)
    if not (args.write or args.check):
        print(bench_table())
        return 0
    old = README.read_text()
    new = render(old)
    if args.check:
        if new != old:
            print("README.md's generated blocks are stale: run python benchmarks/readme_table.py --write")
            return 1
        return 0
    README.write_text(new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
