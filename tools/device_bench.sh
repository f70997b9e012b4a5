#!/usr/bin/env bash
# The accelerator benchmark (tools/bench_accel.py) as a lent GPU / TPU machine runs it: from the repository root,
# with no network. Wheels the machine lacks travel in .whl/ and are installed offline; writes $OUT/accel.json.
#
#   OUT=/tmp/out tools/device_bench.sh              # all cases at Llama-3.2-1B sizes, at most BENCH_TIMEOUT s
#   tools/device_bench.sh accel_sft --steps 5       # extra arguments go to tools/bench_accel.py
set -euo pipefail
OUT="${OUT:-/tmp/jaxpt-accel}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
# JAX preallocates 75% of GPU memory by default; XLA estimates the SFT step (8 x 4096 tokens) at 58 GiB on CPU.
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
status=0
timeout "${BENCH_TIMEOUT:-480}" python3 tools/bench_accel.py --size 1b --json "$OUT/accel.json" "$@" || status=$?
[ -f "$OUT/accel.json" ] && cat "$OUT/accel.json" && echo  # also in the output, should the file not come back
exit "$status"
