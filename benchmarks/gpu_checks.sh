#!/usr/bin/env bash
# One-shot GPU checks (run on the lent CUDA machine from the repo root): installs the package
# tree into /tmp/pkg (its torch is used as-is), runs the MFU benchmark, copies logs to $OUT.
set -uo pipefail
REPO=$(pwd)
mkdir -p /tmp/pkg/trimodal
cp -r trimodal/* /tmp/pkg/trimodal/
for d in tokenizers shards pipelines train; do cp -r "$d" "/tmp/pkg/trimodal/$d"; done
export PYTHONPATH=/tmp/pkg PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
cd /tmp && python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
cd /tmp && timeout 330 python3 "$REPO/benchmarks/bench_gpu_mfu.py" "$@" 2>&1 | tee "${OUT:-/tmp}/mfu.log"
cp /tmp/mfu/run-*/log.jsonl "${OUT:-/tmp}/" 2>/dev/null || true
