#!/usr/bin/env bash
# RL on arithmetic, end to end: the SFT quickstart, then GRPO and PPO from its exported model, then the
# held-out accuracy report and the reward / KL plots (experiments/rl_arithmetic/results/).
#
#   bash experiments/rl_arithmetic/run.sh            # runs under runs/rl_arithmetic (must not exist yet)
#   OUT=/tmp/rl bash experiments/rl_arithmetic/run.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-runs/rl_arithmetic}
RESULTS=${RESULTS:-experiments/rl_arithmetic/results}
JAXPT=${JAXPT:-.venv/bin/jaxpt}
PYTHON=${PYTHON:-.venv/bin/python}
if [ -e "$OUT" ]; then echo "$OUT exists; remove it or set OUT=..." >&2; exit 1; fi
mkdir -p "$OUT" "$RESULTS"
TIMINGS="$OUT/timings.jsonl"

stage() {  # stage NAME COMMAND...: runs COMMAND, appends its wall time to $TIMINGS
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  "$@" 2>&1 | tee "$OUT/$name.log"
  end=$(date +%s.%N)
  echo "{\"stage\": \"$name\", \"seconds\": $(echo "$end - $start" | bc)}" >> "$TIMINGS"
}

# 1. SFT quickstart: a tiny Llama-style model from scratch on data/arithmetic/train.jsonl.
stage sft "$JAXPT" train --config=configs/sft/quickstart.py --workdir="$OUT/sft"
SFT="$OUT/sft/export"

# 2. GRPO and 3. PPO from the SFT export (configs default to runs/quickstart/export; point them at ours).
stage grpo "$JAXPT" train --config=configs/grpo/arithmetic.py --workdir="$OUT/grpo" \
  --config.model.path="$SFT" --config.tokenizer.path="$SFT"
stage ppo "$JAXPT" train --config=configs/ppo/arithmetic.py --workdir="$OUT/ppo" \
  --config.model.path="$SFT" --config.tokenizer.path="$SFT"

# 4. Held-out exact match (greedy decoding + the arithmetic verifier) before / after, reward and KL curves.
stage report "$PYTHON" experiments/rl_arithmetic/report.py \
  --model sft="$SFT" --model grpo="$OUT/grpo/export" --model ppo="$OUT/ppo/export" \
  --run grpo="$OUT/grpo" --run ppo="$OUT/ppo" --timings "$TIMINGS" --out "$RESULTS"

# Commit-ready artefacts: metrics and TensorBoard event files of the three runs.
for run in sft grpo ppo; do
  mkdir -p "$RESULTS/runs/$run"
  cp "$OUT/$run/metrics.jsonl" "$OUT/$run/config.json" "$RESULTS/runs/$run/"
  rm -rf "$RESULTS/runs/$run/tensorboard" && cp -r "$OUT/$run/tensorboard" "$RESULTS/runs/$run/tensorboard"
done
cp "$TIMINGS" "$RESULTS/timings.jsonl"
echo "results in $RESULTS"
