"""The benchmark matrix from a source checkout: the same code as `privinfer bench --matrix`.

    python benchmarks/run_matrix.py                      # default matrix into benchmarks/results/matrix
    python benchmarks/run_matrix.py --matrix quick --out /tmp/quick
    python benchmarks/run_matrix.py --only plain,ss --model secureml-mnist --no-peers
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from privinfer.cli import main  # noqa: E402

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "matrix"

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--matrix" not in argv:
        argv = ["--matrix", "default", *argv]
    if "--out" not in argv:
        argv = [*argv, "--out", str(DEFAULT_OUT)]
    sys.exit(main(["bench", *argv]))
