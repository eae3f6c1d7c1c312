#!/usr/bin/env bash
# Train on several machines: run this same command on every node (by hand, pdsh, or a
# scheduler). torchrun's c10d rendezvous on node 0 assigns the ranks.
#
#   NNODES=4 RDZV_ENDPOINT=node0.example:29500 RUN_ID=trimodal-1b \
#     infra/launch/torchrun_multi_node.sh CONFIG [trimodal train options...]
#
# CONFIG: a JSON file or a packaged example name (tiny_cpu, 1b_h100, 3b_paper). Every node must
# see the same CONFIG, the same datasets and the same run.out_dir: put run.out_dir on a
# filesystem shared by all nodes (checkpoints are written there by every rank; see README.md).
#
# Environment:
#   NNODES           number of nodes (required), or MIN:MAX for an elastic range
#   RDZV_ENDPOINT    host:port reachable from every node, normally node 0 (required)
#   RUN_ID           rendezvous id, the same on every node and unique per job (default: trimodal)
#   NPROC_PER_NODE   processes per node (default: the number of visible GPUs, else 1)
#   MAX_RESTARTS     torchrun restarts every worker after a failure this many times (default 3);
#                    each restart resumes from the latest complete checkpoint
#   NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...  network selection for NCCL, when the default is wrong
set -euo pipefail

if [ $# -lt 1 ]; then
  sed -n '2,21p' "$0" >&2
  exit 2
fi
: "${NNODES:?set NNODES (number of nodes)}"
: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT=host:port of node 0}"
CONFIG=$1
shift

source "$(dirname "$0")/common.sh"
CONFIG_PATH=$(resolve_config "$CONFIG")

exec torchrun \
  --nnodes="$NNODES" \
  --nproc_per_node="$NPROC_PER_NODE" \
  --rdzv_backend=c10d \
  --rdzv_endpoint="$RDZV_ENDPOINT" \
  --rdzv_id="${RUN_ID:-trimodal}" \
  --max_restarts="${MAX_RESTARTS:-3}" \
  --no-python \
  trimodal train --config "$CONFIG_PATH" --auto-resume "$@"
