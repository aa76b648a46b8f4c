#!/usr/bin/env bash
# GRPO with PRM step rewards, hardened (process_neutral=neither: prose steps get no reward; the verdict, weight 2,
# as the last step), on the PRM of benchmarks/monitor_evidence.sh; then outcome-only GRPO on the same budget (the
# defaults: 28 steps x 32 completions). Compare both with monitor_evidence.sh's grpo-prm run. Measured (AMD EPYC,
# 2 cores, 100 held-out problems, greedy): hardened 0.24 -> 0.37, outcome-only 0.24 -> 0.35, unhardened 0.24 -> 0.01.
set -euo pipefail
OUT=${1:-runs/monitor-evidence}
BIN=${BIN:-.venv/bin}
while [ -n "${AFTER_PID:-}" ] && kill -0 "$AFTER_PID" 2>/dev/null; do sleep 20; done
[ -f "$OUT/grpo-prm-hardened/summary.json" ] || /usr/bin/time -v -o "$OUT/grpo-prm-hardened.time" \
  $BIN/incentivize train grpo --output-dir "$OUT/grpo-prm-hardened" --reward prm:"$OUT/prm/final" \
  --set advantage=grpo_process --set process_neutral=neither --set process_outcome_weight=2 \
  --set hacking_patience=4 --set report_to=none >"$OUT/grpo-prm-hardened.log" 2>&1
echo "done: $OUT/grpo-prm-hardened"
# outcome-only GRPO on the same budget (the defaults: 28 steps x 32 completions), its model also a teacher for
# benchmarks/rlaif_vs_sft.sh
[ -f "$OUT/grpo-outcome/summary.json" ] || /usr/bin/time -v -o "$OUT/grpo-outcome.time" \
  $BIN/incentivize train grpo --output-dir "$OUT/grpo-outcome" --set report_to=none >"$OUT/grpo-outcome.log" 2>&1
echo "done: $OUT/grpo-outcome"
