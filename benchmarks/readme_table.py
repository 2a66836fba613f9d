"""Print the README's benchmark table from the JSON records `privinfer bench --json` wrote."""
import json
import sys
from pathlib import Path

from privinfer.bench import format_table

RESULTS = Path(__file__).resolve().parent / "results"
FILES = sys.argv[1:] or ["plain.json", "he_latency.json", "he_batch_records.json", "ss_records.json", "cheetah.json",
                         "noisy_records.json"]

records = []
for name in FILES:
    path = RESULTS / name
    if path.exists():
        records += json.loads(path.read_text())
print(format_table(records))
