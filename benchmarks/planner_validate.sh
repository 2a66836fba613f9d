#!/usr/bin/env bash
# The planner's validation (issue #11's targets) in one script: calibration, the 3 networks x loopback/lan/wan
# under `protocol auto`, single-protocol `ss` on wan for the plan-quality ratios, wide-mlp-mnist on mobile
# (a hybrid that starts in HE: the offline phase overlapped), loopback measured again at the end (the
# run-to-run check), and GAZELLE's split on loopback against its price (`gazelle.txt`). The 2PC parties are
# placed by the scheduler, as in a user's session; PIN=1 pins them apart in the calibration and every bench
# (`privinfer/affinity.py`: steadier under load, slower on an idle machine).
#
#     OUT=benchmarks/results/planner/session7 bash benchmarks/planner_validate.sh     # ~15 min idle, needs root
#
# Set PY to the interpreter (default: python), PRIVINFER_CACHE for a private calibration, SKIP_PROFILE=1 to
# reuse the current calibration. Writes OUT/*.json, OUT/*.log and OUT/report.md (benchmarks/planner_report.py).
set -euo pipefail
PY=${PY:-python}
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
# PIN=1: the environment pins the calibration's parties, `--pin` each bench's (the variable alone reaches only the former)
PINARG=""
if [ -n "${PIN:-}" ]; then export PRIVINFER_PIN_PARTIES=1; PINARG="--pin"; fi
NETS="cryptonets-mnist mixed-mnist minionn-mnist"
stamp() { echo "$(date -u +%H:%M:%S) $*" | tee -a "$OUT/started"; uptime >> "$OUT/started"; }
stamp start
if [ -z "${SKIP_PROFILE:-}" ]; then
  $PY -m privinfer profile --model $NETS wide-mlp-mnist > "$OUT/profile.log" 2>&1
  stamp profiled
fi
$PY -m privinfer bench $PINARG --protocol auto --model $NETS --network loopback lan --samples 20 \
    --json "$OUT/auto_loopback_lan.json" > "$OUT/bench1.log" 2>&1
stamp loopback+lan
$PY -m privinfer bench $PINARG --protocol auto --model $NETS --network wan --samples 5 --json "$OUT/auto_wan.json" \
    > "$OUT/bench2.log" 2>&1
$PY -m privinfer bench $PINARG --protocol ss --model mixed-mnist minionn-mnist --network wan --samples 5 \
    --json "$OUT/ss_wan.json" > "$OUT/bench3.log" 2>&1
stamp wan
$PY -m privinfer bench $PINARG --protocol auto --model wide-mlp-mnist --network mobile --samples 5 \
    --json "$OUT/auto_wide_mobile.json" > "$OUT/bench4.log" 2>&1
stamp mobile
$PY -m privinfer bench $PINARG --protocol auto --model $NETS --network loopback --samples 20 \
    --json "$OUT/auto_loopback_again.json" > "$OUT/bench5.log" 2>&1
# a plan that starts in HE (GAZELLE's split): the offline phase overlapped with the prefix, predicted and measured
GAZELLE="he:0,ss:1-2,he:3,ss:4-5,he:6-7,ss:8,he:9"
$PY -m privinfer bench $PINARG --protocol hybrid -o plan=$GAZELLE -o hiding=perfect --model minionn-mnist --samples 20 \
    --json "$OUT/hybrid_gazelle.json" > "$OUT/bench7.log" 2>&1
$PY - "$OUT/hybrid_gazelle.json" "$GAZELLE" > "$OUT/gazelle.txt" <<'PYEOF'
import json, sys
from privinfer import zoo
from privinfer.planner.auto import price_plan
rec = json.load(open(sys.argv[1]))[0]
p = price_plan(zoo.load_model("minionn-mnist"), sys.argv[2], "loopback")
lat = rec["latency_s"]
print(f"GAZELLE split on loopback: predicted {p.predicted_latency_s():.3f} s (offline overlapped; "
      f"{p.network.latency(p.cost):.3f} s in sequence), measured {lat['median']:.3f} s ({lat['p25']:.3f}-{lat['p75']:.3f}); "
      f"offline wait before the first 2PC step measured {rec['offline_s'] * 1e3:.1f} ms")
PYEOF
stamp done
$PY benchmarks/planner_report.py "$OUT"/auto_*.json "$OUT"/ss_*.json > "$OUT/report.md"
cat "$OUT/report.md" "$OUT/gazelle.txt"
