#!/usr/bin/env bash
# bfloat16 rollouts against float32 on the default run (SmolLM2-135M-Instruct, arithmetic, 28 steps, 100 held-out
# problems), 3 seeds each; then GSPO and CISPO with their presets on the same budget. About 80 minutes on 2 cores.
# Each run's metrics.jsonl holds the learning curve; summary.json the held-out accuracy. `benchmarks/precision_table.py`
# prints the tables from them.
set -euo pipefail
OUT=${1:-runs/precision-evidence}
BIN=${BIN:-.venv/bin}
SEEDS=${SEEDS:-"1 2 3"}
mkdir -p "$OUT"
timed() { local name=$1; shift; /usr/bin/time -v -o "$OUT/$name.time" "$@" >"$OUT/$name.log" 2>&1; }
for seed in $SEEDS; do
  for dtype in float32 bfloat16; do
    name=$dtype-seed$seed
    [ -f "$OUT/$name/summary.json" ] || timed "$name" $BIN/incentivize train grpo --output-dir "$OUT/$name" \
      --set seed="$seed" --set rollout_dtype=$dtype --set eval_before=false --set report_to=none
  done
done
for algorithm in ${OBJECTIVES:-gspo cispo}; do
  [ -f "$OUT/$algorithm-seed1/summary.json" ] || timed "$algorithm-seed1" $BIN/incentivize train "$algorithm" \
    --output-dir "$OUT/$algorithm-seed1" --set seed=1 --set eval_before=false --set report_to=none
done
echo "done: $OUT"
