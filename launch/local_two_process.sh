#!/usr/bin/env bash
# Two JAX processes on this machine (CPU, one device each), coordinated over 127.0.0.1: the
# multi-host code path (jax.distributed, per-process data, global batch assembly, replicated
# checkpoints) exercised for real without a cluster.
#
# Usage: launch/local_two_process.sh WORKDIR CONFIG [--config.a.b=v ...]
#   e.g. launch/local_two_process.sh /tmp/oclr_2proc configs/tiny.py --config.train.num_steps=4
# Logs: WORKDIR.logs/process_0.log, WORKDIR.logs/process_1.log (beside the workdir: the trainer
# refuses a workdir holding files it did not write).  Exits non-zero if either process fails.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  sed -n '2,10p' "$0"; exit 2
fi
WORKDIR=$1; CONFIG=$2; shift 2
REPO=$(cd "$(dirname "$0")/.." && pwd)
PORT=${PORT:-$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
LOGDIR="${WORKDIR%/}.logs"
mkdir -p "$LOGDIR"
export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES= TF_CPP_MIN_LOG_LEVEL=2
unset XLA_FLAGS  # one CPU device per process
pids=()
for id in 0 1; do
  (cd "$REPO" && exec python -m oclr_jax.train --config "$CONFIG" --workdir "$WORKDIR" \
      --coordinator_address "127.0.0.1:$PORT" --num_processes 2 --process_id "$id" "$@") \
      >"$LOGDIR/process_$id.log" 2>&1 &
  pids+=($!)
done
status=0
for _ in "${pids[@]}"; do
  if ! wait -n; then
    status=1
    kill "${pids[@]}" 2>/dev/null || true  # the survivor would wait for its peer forever
  fi
done
if [[ $status -ne 0 ]]; then
  echo "a process failed (exit $status); see $LOGDIR/process_*.log" >&2
  tail -n 20 "$LOGDIR"/process_*.log >&2
fi
exit $status
