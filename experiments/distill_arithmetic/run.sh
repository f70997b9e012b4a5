#!/usr/bin/env bash
# Distil a tiny arithmetic teacher into a ~4x smaller student through generated data, then evaluate both.
#
#   bash experiments/distill_arithmetic/run.sh                      # everything (~7 min on 2 CPU cores)
#   TEACHER=runs/quickstart/export bash experiments/distill_arithmetic/run.sh   # reuse an existing teacher
#
# Stages are idempotent: a finished training run is reused, data generation resumes where it stopped.
# Writes runs under $RUNS and the small, commit-ready reports under experiments/distill_arithmetic/results/.
set -euo pipefail
cd "$(dirname "$0")/../.."

JAXPT=${JAXPT:-.venv/bin/jaxpt}
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-runs/distill_arithmetic}
RESULTS=${RESULTS:-experiments/distill_arithmetic/results}
TEACHER=${TEACHER:-}
TEACHER_STEPS=${TEACHER_STEPS:-1000}
STUDENT_STEPS=${STUDENT_STEPS:-600}
STUDENT_HIDDEN=${STUDENT_HIDDEN:-64}
NUM_PROMPTS=${NUM_PROMPTS:-3000}
mkdir -p "$RUNS" "$RESULTS"
declare -A SECS

# 1. Teacher: the SFT quickstart model (hidden 128, 2 layers), trained longer than the quickstart's 300 steps.
t0=$SECONDS
if [ -z "$TEACHER" ]; then
  if [ ! -d "$RUNS/teacher/export" ]; then
    $JAXPT train --config=configs/sft/quickstart.py --workdir="$RUNS/teacher" \
      --config.train.steps="$TEACHER_STEPS" --config.train.eval_every=250 --config.train.checkpoint_every=500
  fi
  TEACHER="$RUNS/teacher/export"
fi
SECS[teacher_train]=$((SECONDS - t0))

# 2. Data: NUM_PROMPTS fresh problems (never an eval prompt) x 4 samples at T=0.8, verified; best-of-4 SFT set.
t0=$SECONDS
$JAXPT generate-data --config=configs/datagen/arithmetic_distill.py --output="$RUNS/data" \
  --config.teacher.path="$TEACHER" --config.teacher.name=teacher --config.prompts.num_prompts="$NUM_PROMPTS"
SECS[generate_data]=$((SECONDS - t0))

# 3. Student: a from-scratch model with half the width (about a quarter of the parameters), generated data only.
t0=$SECONDS
if [ ! -d "$RUNS/student/export" ]; then
  $JAXPT train --config=configs/sft/quickstart.py --workdir="$RUNS/student" \
    --config.data.train="$RUNS/data/sft.jsonl" \
    --config.model.scratch.hidden_size="$STUDENT_HIDDEN" \
    --config.model.scratch.intermediate_size=$((3 * STUDENT_HIDDEN)) \
    --config.train.steps="$STUDENT_STEPS" --config.train.eval_every=200 --config.train.checkpoint_every=600
fi
SECS[student_train]=$((SECONDS - t0))

# 4. Evaluate both on the shipped eval split (200 problems the data generator never saw).
t0=$SECONDS
$JAXPT eval --config=configs/eval/arithmetic.py --model="$TEACHER" --output="$RUNS/eval/teacher" \
  --config.report.title="Teacher ($TEACHER)"
$JAXPT eval --config=configs/eval/arithmetic.py --model="$RUNS/student/export" --output="$RUNS/eval/student" \
  --config.report.title="Student (hidden $STUDENT_HIDDEN, generated data)"
SECS[eval]=$((SECONDS - t0))

# 5. Commit-ready summary.
cp "$RUNS/data/report.md" "$RESULTS/datagen_report.md"
cp "$RUNS/data/report.json" "$RESULTS/datagen_report.json"
cp "$RUNS/eval/teacher/report.json" "$RESULTS/teacher_eval.json"
cp "$RUNS/eval/student/report.json" "$RESULTS/student_eval.json"
TIMES="teacher_train=${SECS[teacher_train]} generate_data=${SECS[generate_data]} student_train=${SECS[student_train]} eval=${SECS[eval]}"
"$PY" - "$TEACHER" "$RUNS" "$RESULTS" "$TIMES" <<'PYEOF'
import json, os, sys

from jaxpt.models.config import ModelConfig

teacher, runs, results, times = sys.argv[1:5]
rows = {"teacher": teacher, "student": os.path.join(runs, "student", "export")}
data = json.load(open(os.path.join(runs, "data", "report.json")))
keys = ["exact_match", "verifier_accuracy", "loss", "perplexity", "token_accuracy", "chrf", "token_f1"]
lines = [
    "# Distilling arithmetic: teacher vs student",
    "",
    "Both evaluated with `jaxpt eval --config=configs/eval/arithmetic.py` on `data/arithmetic/eval.jsonl`",
    "(200 problems; greedy decoding). The student never saw the shipped training data: only the teacher's",
    "verified best-of-4 samples on fresh problems.",
    "",
    "| model | params | train examples | " + " | ".join(keys) + " |",
    "|---|---|---|" + "---|" * len(keys),
]
for name, path in rows.items():
    m = json.load(open(os.path.join(runs, "eval", name, "report.json")))["metrics"]
    n_params = ModelConfig.from_hf(path).num_params()
    n_train = "4000 (shipped)" if name == "teacher" else f"{data['counts']['sft']} (generated)"
    lines.append(f"| {name} | {n_params:,} | {n_train} | " + " | ".join(f"{m[k]:.4f}" for k in keys) + " |")
c, s = data["counts"], data["sample_stats"]
lines += [
    "",
    "## Generated data",
    "",
    f"- {c['prompts']} prompts x {data['sampling']['num_samples']} samples = {c['samples']} samples "
    f"(temperature {data['sampling']['temperature']}); teacher sample accuracy {s['teacher_accuracy']:.3f}, "
    f"pass@{data['sampling']['num_samples']} {s['pass_at_n']:.3f}.",
    f"- SFT set (verified, best of N): {c['sft']} rows; preference pairs (verified vs wrong): "
    f"{c['preference_pairs']}.",
    "- Filter counts: `datagen_report.md`.",
    "",
    f"Wall-clock seconds on this machine: {times}.",
]
open(os.path.join(results, "REPORT.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
PYEOF
