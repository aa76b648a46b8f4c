#!/usr/bin/env bash
# The evidence behind `incentivize train dpo|simpo|kto` on SmolLM2-135M-Instruct (CPU, about 90 minutes on
# 2 cores): (1) pairs the model samples itself on the arithmetic task, correct against incorrect by the
# verifier, trained with DPO; (2) every other loss on the same pairs file (KTO on the same answers unpaired);
# (3) on-policy DPO (Iterative RPO) against GRPO with the same 896 sampled completions, held-out greedy
# accuracy on 100 problems, wall time and peak memory. Summaries: benchmarks/preference_evidence.py OUT.
set -euo pipefail
OUT=${1:-runs/preference-evidence}
BIN=${BIN:-.venv/bin}
mkdir -p "$OUT"
timed() { local name=$1; shift; /usr/bin/time -v -o "$OUT/$name.time" "$@" >"$OUT/$name.log" 2>&1; }

# (1) self-sampled pairs: 128 problems x 8 completions, DPO (sigmoid) for 2 epochs on them
[ -f "$OUT/pairs/summary.json" ] || timed pairs $BIN/incentivize train dpo --pairs self --output-dir "$OUT/pairs" \
  --set rounds=1 --set problems_per_round=128 --set samples_per_problem=8 --set epochs=2 \
  --set learning_rate=5e-6 --set report_to=none
PAIRS="$OUT/pairs/pairs-round-1.jsonl"
# KTO reads answers, not pairs: each pair's chosen answer is desirable, its rejected one undesirable
$BIN/python - "$PAIRS" "$OUT/kto-answers.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
with open(sys.argv[2], "w") as out:
    for r in rows:
        out.write(json.dumps({"prompt": r["prompt"], "completion": r["chosen"], "label": True}) + "\n")
        out.write(json.dumps({"prompt": r["prompt"], "completion": r["rejected"], "label": False}) + "\n")
PY

# (2) each loss on those pairs, 2 epochs, the same learning rate
run_loss() { local name=$1 algorithm=$2 data=$3; shift 3
  [ -f "$OUT/$name/summary.json" ] || timed "$name" $BIN/incentivize train "$algorithm" --data "$data" \
    --output-dir "$OUT/$name" --set epochs=2 --set learning_rate=5e-6 --set report_to=none "$@"; }
run_loss ipo dpo "$PAIRS" --set loss_type=ipo
run_loss cdpo dpo "$PAIRS" --set loss_type=cdpo --set label_smoothing=0.1
run_loss robust dpo "$PAIRS" --set loss_type=robust --set label_smoothing=0.1
run_loss hinge dpo "$PAIRS" --set loss_type=hinge
run_loss simpo simpo "$PAIRS"
run_loss kto kto "$OUT/kto-answers.jsonl"

# (3) the same 896 completions: 4 rounds x 28 problems x 8 for DPO, 28 steps x 32 for GRPO (the default)
[ -f "$OUT/onpolicy-dpo/summary.json" ] || timed onpolicy-dpo $BIN/incentivize train dpo --pairs self \
  --output-dir "$OUT/onpolicy-dpo" --set rounds=4 --set problems_per_round=28 --set samples_per_problem=8 \
  --set rpo_alpha=1 --set learning_rate=5e-6 --set eval_limit=100 --set report_to=none
[ -f "$OUT/grpo/summary.json" ] || timed grpo $BIN/incentivize train grpo --output-dir "$OUT/grpo" \
  --set report_to=none
echo "done: $OUT"
