#!/usr/bin/env bash
# interleaved A/B through the CLI: privinfer bench --protocol ss --model minionn-mnist on loopback, pinned vs --no-pin
set -u
cd /work/wt/planner-loopback
export PYTHONPATH=$PWD PRIVINFER_CACHE=/tmp/plb/cache
PY=/work/main/.venv/bin/python
mkdir -p /tmp/plb/ab
$PY benchmarks/loopback_variance.py --sessions 8 --queries 10 --same-core --out /tmp/plb/same.json > /tmp/plb/same.log 2>&1
for k in 1 2 3 4 5 6; do
  uptime > /tmp/plb/ab/load_pin_$k
  $PY -m privinfer bench --protocol ss --model minionn-mnist --samples 20 --json /tmp/plb/ab/pin_$k.json > /tmp/plb/ab/pin_$k.log 2>&1
  uptime > /tmp/plb/ab/load_free_$k
  $PY -m privinfer bench --protocol ss --model minionn-mnist --samples 20 --no-pin --json /tmp/plb/ab/free_$k.json > /tmp/plb/ab/free_$k.log 2>&1
done
echo done > /tmp/plb/ab/DONE
