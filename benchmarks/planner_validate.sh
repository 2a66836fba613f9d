#!/usr/bin/env bash
# The planner's validation (issue #11's targets) in one script: calibration, the 3 networks x loopback/lan/wan
# under `protocol auto`, single-protocol `ss` on wan for the plan-quality ratios, wide-mlp-mnist on mobile
# (a hybrid that starts in HE: the offline phase overlapped), loopback measured again at the end (the
# run-to-run check), and once more with the parties left to the scheduler (`--no-pin`) for the A/B.
#
#     OUT=benchmarks/results/planner/session7 bash benchmarks/planner_validate.sh     # ~15 min idle, needs root
#
# Set PY to the interpreter (default: python), PRIVINFER_CACHE for a private calibration, SKIP_PROFILE=1 to
# reuse the current calibration. Writes OUT/*.json, OUT/*.log and OUT/report.md (benchmarks/planner_report.py).
set -euo pipefail
PY=${PY:-python}
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
NETS="cryptonets-mnist mixed-mnist minionn-mnist"
stamp() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$OUT/started"; uptime >> "$OUT/started"; }
stamp start
if [ -z "${SKIP_PROFILE:-}" ]; then
  $PY -m privinfer profile --model $NETS wide-mlp-mnist > "$OUT/profile.log" 2>&1
  stamp profiled
fi
$PY -m privinfer bench --protocol auto --model $NETS --network loopback lan --samples 20 \
    --json "$OUT/auto_loopback_lan.json" > "$OUT/bench1.log" 2>&1
stamp loopback+lan
$PY -m privinfer bench --protocol auto --model $NETS --network wan --samples 5 --json "$OUT/auto_wan.json" \
    > "$OUT/bench2.log" 2>&1
$PY -m privinfer bench --protocol ss --model mixed-mnist minionn-mnist --network wan --samples 5 \
    --json "$OUT/ss_wan.json" > "$OUT/bench3.log" 2>&1
stamp wan
$PY -m privinfer bench --protocol auto --model wide-mlp-mnist --network mobile --samples 5 \
    --json "$OUT/auto_wide_mobile.json" > "$OUT/bench4.log" 2>&1
stamp mobile
$PY -m privinfer bench --protocol auto --model $NETS --network loopback --samples 20 \
    --json "$OUT/auto_loopback_again.json" > "$OUT/bench5.log" 2>&1
$PY -m privinfer bench --protocol auto --model $NETS --network loopback --samples 20 --no-pin \
    --json "$OUT/auto_loopback_nopin.json" > "$OUT/bench6.log" 2>&1
stamp done
$PY benchmarks/planner_report.py "$OUT"/auto_*.json "$OUT"/ss_*.json > "$OUT/report.md"
cat "$OUT/report.md"
