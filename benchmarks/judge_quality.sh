#!/usr/bin/env bash
# SmolLM2-135M-Instruct judging its own arithmetic: 8 samples on each of 100 held-out problems, best-of-8 by the
# judge's grade against majority voting, and the judge's AUROC (how well its grade separates right from wrong).
set -euo pipefail
OUT=${1:-runs/judge-quality}
BIN=${BIN:-.venv/bin}
while [ -n "${AFTER_PID:-}" ] && kill -0 "$AFTER_PID" 2>/dev/null; do sleep 20; done
/usr/bin/time -v -o "$OUT.time" $BIN/incentivize eval --model smollm2-135m --samples 8 --limit 100 \
  --max-new-tokens 64 --select majority,judge:smollm2-135m --output "$OUT" > "$OUT.log" 2>&1
echo "done: $OUT"
