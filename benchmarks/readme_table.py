"""Regenerate the README's generated blocks: the benchmark table (from the JSON records `privinfer bench
--json` wrote) and the local-DP accuracy bounds (from `privinfer.privacy.ldp_accuracy_bound`).

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
from privinfer.privacy import ldp_accuracy_bound

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
README = ROOT / "README.md"
TABLE_FILES = ["plain.json", "he_latency.json", "he_latency_fast.json", "he_batch_records.json", "ss_records.json", "cheetah.json",
               "noisy_records.json"]
BOUND_EPSILONS = (1, 2, 5, 10)


def bench_table(files=TABLE_FILES) -> str:
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


BLOCKS = {"bench-table": bench_table, "ldp-bound": ldp_bounds}


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
