#!/usr/bin/env bash
# "A Critical Evaluation of AI Feedback" on SmolLM2-135M-Instruct and the arithmetic task (CPU, 2 cores): one
# `incentivize train rlaif-vs-sft` per SFT teacher (the task's reference solutions, the base model itself, and a
# GRPO-trained model, e.g. `make demo`'s final/), each with SmolLM2 as the AI critic; every run also trains the
# oracle-critic arm. The table is each run's comparison.md.
# usage: benchmarks/rlaif_vs_sft.sh [OUT] [GRPO_MODEL_DIR]
set -euo pipefail
OUT=${1:-runs/rlaif-vs-sft}
GRPO_MODEL=${2:-runs/monitor-evidence/grpo-outcome/final}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
while [ -n "${AFTER_PID:-}" ] && kill -0 "$AFTER_PID" 2>/dev/null; do sleep 20; done
for teacher in oracle smollm2-135m "$GRPO_MODEL"; do
  name=teacher-$(basename "$(dirname "$teacher/x")")
  [ "$teacher" = oracle ] && name=teacher-oracle
  [ "$teacher" = smollm2-135m ] && name=teacher-base
  [ -f "$OUT/$name/summary.json" ] || /usr/bin/time -v -o "$OUT/$name.time" $BIN/incentivize train rlaif-vs-sft \
    --sft-teacher "$teacher" --critic smollm2-135m --output-dir "$OUT/$name" --set report_to=none \
    >"$OUT/$name.log" 2>&1
  echo "$name:"; cat "$OUT/$name/comparison.md"
done
