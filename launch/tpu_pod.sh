#!/usr/bin/env bash
# Train on a Cloud TPU VM pod slice: the same command on every worker (one process per host).
# jax.distributed.initialize() discovers the slice's workers, devices and coordinator itself.
#
# Usage (from your workstation):
#   TPU_NAME=my-v4-32 ZONE=us-central2-b WORKDIR=gs://bucket/oclr/run1 \
#     launch/tpu_pod.sh configs/oclr_paper.py --config.train.batch_size=32
# Requirements: this repository checked out at REPO_DIR (default ~/oclr-jax) on every worker
# with `pip install -r requirements.txt jax[tpu]` done; WORKDIR on storage every worker sees
# (GCS or NFS): checkpoints are written collectively.  Syn-Train/Syn-Val as a tfds dataset in
# a shared data_dir (--config.data.tfds_name=... --config.data.tfds_data_dir=gs://...).
# train.batch_size is the global batch: a multiple of the number of TPU chips.
set -euo pipefail
: "${TPU_NAME:?set TPU_NAME}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}"
CONFIG=${1:?usage: launch/tpu_pod.sh CONFIG [--config.a.b=v ...]}; shift
REPO_DIR=${REPO_DIR:-'~/oclr-jax'}
ARGS=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command \
  "cd $REPO_DIR && python -m oclr_jax.train --multihost --config $CONFIG --workdir $WORKDIR$ARGS \
   2>&1 | tee -a /tmp/oclr_train.log"
