#!/usr/bin/env bash
# The sophistry monitor on the real case (SmolLM2-135M-Instruct, CPU, about 35 minutes on 2 cores): a PRM trained
# on the model's own arithmetic solutions, then GRPO with its step rewards (advantage grpo_process), where the
# policy learned to please the PRM; the monitor logs the PRM against the verifier and the alarm (patience 4) warns.
set -euo pipefail
OUT=${1:-runs/monitor-evidence}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
timed() { local name=$1; shift; /usr/bin/time -v -o "$OUT/$name.time" "$@" >"$OUT/$name.log" 2>&1; }
[ -f "$OUT/prm/summary.json" ] || timed prm $BIN/incentivize train prm --output-dir "$OUT/prm" \
  --set num_problems=64 --set samples_per_problem=8 --set max_completion_length=64 --set epochs=2 \
  --set learning_rate=3e-5 --set report_to=none
# wait for another benchmark to finish first (its timings are measured alone), if asked to
while [ -n "${AFTER_PID:-}" ] && kill -0 "$AFTER_PID" 2>/dev/null; do sleep 20; done
[ -f "$OUT/grpo-prm/summary.json" ] || timed grpo-prm $BIN/incentivize train grpo --output-dir "$OUT/grpo-prm" \
  --reward prm:"$OUT/prm/final" --set advantage=grpo_process --set hacking_patience=4 --set report_to=none
echo "done: $OUT"
