#!/usr/bin/env bash
# The prepared accelerator check: what to run in the few minutes a GPU is available.
#
#   tools/accelerator_check.sh               # on a GPU machine, < 8 minutes in all
#   tools/accelerator_check.sh --cpu-smoke   # the same steps at toy sizes on CPU (a dry run)
#
# Steps (each under its own timeout; a failing step is reported and the next one still runs):
#   env        devices JAX sees, nvidia-smi
#   tests      the accelerator-relevant test subset (model, losses, matching, sharded step,
#              memory switches) on the accelerator's backend
#   bench_train  tools/bench_train.py at the paper size, float32 and bfloat16 (no torch)
#   bench_model  tools/bench_model.py at (1, 30, 128, 224), float32 and bfloat16
#   train      a short training run of configs/tiny.py on synthetic sequences rendered inline
# Every step prints one JSON line {"check": ..., "rc": ..., "seconds": ..., "log": ...};
# benchmark lines are copied into $OUT/results.jsonl.  Logs go to $OUT (default: a new
# folder under /tmp).  Exit status: 0 when every step passed, 1 otherwise.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
SMOKE=0
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "error: unknown argument $arg (expected --cpu-smoke or nothing)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d /tmp/accelerator_check.XXXXXX)}
mkdir -p "$OUT"
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export TF_CPP_MIN_LOG_LEVEL=2
if [[ $SMOKE -eq 1 ]]; then
  export JAX_PLATFORMS=cpu
else
  # Empty: JAX picks the accelerator (the test conftest only defaults it to cpu when unset).
  export JAX_PLATFORMS=""
  unset XLA_FLAGS
fi

failures=0
# run_check NAME SECONDS COMMAND...: runs under `timeout`, logs to $OUT/NAME.log, one JSON line.
run_check() {
  local name=$1 limit=$2; shift 2
  local log="$OUT/$name.log" start rc
  start=$(date +%s.%N)
  set +e
  timeout --kill-after=10 "$limit" "$@" >"$log" 2>&1
  rc=$?
  set -e
  local seconds
  seconds=$(python -c "import sys; print(round($(date +%s.%N) - $start, 1))")
  if [[ $rc -ne 0 ]]; then
    failures=$((failures + 1))
    tail -n 15 "$log" >&2 || true
  fi
  printf '{"check": "%s", "rc": %d, "timed_out": %s, "seconds": %s, "log": "%s"}\n' \
    "$name" "$rc" "$([[ $rc -eq 124 || $rc -eq 137 ]] && echo true || echo false)" \
    "$seconds" "$log" | tee -a "$RESULTS"
  # Benchmarks print one JSON line: keep it beside the step's status.
  grep -E '^\{' "$log" | tail -n 1 | sed "s/^/{\"check\": \"$name\", \"result\": /; s/\$/}/" \
    >> "$RESULTS" 2>/dev/null || true
}

TRAIN_CONFIG="$OUT/short_run_config.py"
cat > "$TRAIN_CONFIG" <<EOF
from oclr_jax.config.loading import load_config


def get_config():
    config = load_config("$REPO/configs/tiny.py")
    config.data.source = "synthetic_inline"
    config.train.num_steps = $([[ $SMOKE -eq 1 ]] && echo 3 || echo 100)
    config.train.batch_size = $([[ $SMOKE -eq 1 ]] && echo 2 || echo 8)
    config.train.log_every = $([[ $SMOKE -eq 1 ]] && echo 1 || echo 20)
    config.train.eval_every = 0
    config.train.checkpoint_every = 1000
    return config
EOF

if [[ $SMOKE -eq 1 ]]; then
  TESTS=(tests/test_memory_switches.py -m "not slow")
  TRAIN_ARGS=(--sizes tiny --dtypes float32 --repeats 1 --no_torch)
  MODEL_ARGS=(--sizes 1x2x32x32 --dtypes float32 --repeats 1 --no-torch)
  LIMITS=(60 240 600 300 600)
else
  TESTS=(tests/test_model.py tests/test_losses.py tests/test_matching.py
         tests/test_memory_switches.py tests/test_train.py -m "not torch")
  TRAIN_ARGS=(--sizes paper --dtypes float32 bfloat16 --repeats 3 --no_torch)
  MODEL_ARGS=(--sizes 1x30x128x224 --dtypes float32 bfloat16 --repeats 3 --no-torch)
  LIMITS=(30 120 150 90 90)  # 8 min at most, whatever happens
fi

run_check env "${LIMITS[0]}" bash -c \
  'python -c "import jax, json; print(json.dumps({\"backend\": jax.default_backend(), \"devices\": [str(d) for d in jax.devices()], \"jax\": jax.__version__}))"; (nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi")'
run_check tests "${LIMITS[1]}" python -m pytest -q -x -p no:cacheprovider "${TESTS[@]}"
run_check bench_train "${LIMITS[2]}" python tools/bench_train.py "${TRAIN_ARGS[@]}"
run_check bench_model "${LIMITS[3]}" python tools/bench_model.py "${MODEL_ARGS[@]}"
run_check train "${LIMITS[4]}" python -m oclr_jax.train --config "$TRAIN_CONFIG" \
  --workdir "$OUT/short_run"

printf '{"check": "all", "failures": %d, "out": "%s"}\n' "$failures" "$OUT" | tee -a "$RESULTS"
[[ $failures -eq 0 ]]
