#!/usr/bin/env bash
# Train on one machine: one process per GPU (or NPROC_PER_NODE CPU processes, gloo backend).
#
#   infra/launch/torchrun_single_node.sh CONFIG [trimodal train options...]
#
# CONFIG is a JSON file, or the name of an example shipped in trimodal/configs/
# (tiny_cpu, 1b_h100, 3b_paper). Options after it go to `trimodal train` unchanged, e.g.
#   infra/launch/torchrun_single_node.sh 1b_h100 --set run.out_dir=/shared/runs/1b-a
#   NPROC_PER_NODE=2 infra/launch/torchrun_single_node.sh tiny_cpu --set run.steps=50
#
# --auto-resume is always passed: the run continues from the latest complete checkpoint in
# <run.out_dir>/checkpoints, or starts from step 0 when there is none. So the same command
# starts a run and restarts it after a crash or a preemption.
#
# Environment:
#   NPROC_PER_NODE   processes to start (default: the number of visible GPUs, else 1)
#   MAX_RESTARTS     torchrun restarts all workers after a failure this many times (default 0);
#                    each restart resumes from the latest checkpoint
#   OMP_NUM_THREADS  CPU threads per process (torchrun's default is 1)
set -euo pipefail

if [ $# -lt 1 ]; then
  sed -n '2,20p' "$0" >&2
  exit 2
fi
CONFIG=$1
shift

source "$(dirname "$0")/common.sh"
CONFIG_PATH=$(resolve_config "$CONFIG")

# --standalone: a local rendezvous on a free port (no MASTER_ADDR/MASTER_PORT needed).
# --no-python runs the `trimodal` console script itself, whatever the working directory.
exec torchrun \
  --standalone \
  --nproc_per_node="$NPROC_PER_NODE" \
  --max_restarts="${MAX_RESTARTS:-0}" \
  --no-python \
  trimodal train --config "$CONFIG_PATH" --auto-resume "$@"
