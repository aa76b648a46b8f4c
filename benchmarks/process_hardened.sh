#!/usr/bin/env bash
# GRPO with PRM step rewards, hardened (prose steps neither right nor wrong, the verdict as the last step),
# on the PRM of benchmarks/monitor_evidence.sh; compare with its grpo-prm run and with outcome-only GRPO
# (benchmarks/preference_evidence.sh's grpo run: the default, the same 28 steps x 32 completions).
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
