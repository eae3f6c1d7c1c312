#!/usr/bin/env bash
# One-shot GPU checks (run on the lent CUDA machine from the repo root): installs the package
# tree into /tmp/pkg (its torch is used as-is), runs the MFU benchmark, copies logs to $OUT.
set -uo pipefail
REPO=$(pwd)
mkdir -p /tmp/pkg/trimodal
cp -r trimodal/* /tmp/pkg/trimodal/
for d in tokenizers shards pipelines train experiments; do cp -r "$d" "/tmp/pkg/trimodal/$d"; done
export PYTHONPATH=/tmp/pkg PYTHONUNBUFFERED=1 TQDM_DISABLE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
cd /tmp && python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
# 1. MFU of the ~1B config: eager, compile, and the goal path (packed + flex + SAC + CCE/chunked + workers)
cd /tmp && timeout 420 python3 "$REPO/benchmarks/bench_gpu_mfu.py" --mix trimodal "$@" 2>&1 | tee "${OUT:-/tmp}/mfu.log"
for v in eager compile goal; do cp "/tmp/mfu/run-$v/log.jsonl" "${OUT:-/tmp}/log-$v.jsonl" 2>/dev/null || true; done
# 2. (the loss head benchmark is CPU-only for now: bench_loss_head.py has no --device)
# 3. tokenizer throughput on the GPU: Higgs (random full-size weights) in seconds of audio per second
cd /tmp && timeout 120 python3 "$REPO/benchmarks/bench_higgs_encode.py" --device cuda --clock perf_counter 2>&1 | tail -3 | tee "${OUT:-/tmp}/higgs.log"
# 4. the audio-text pipeline with Higgs on the GPU vs a plain batched loop (the tokenizer issue's benchmark)
cd /tmp && timeout 150 python3 "$REPO/benchmarks/bench_audio_pipeline.py" --codec higgs --device cuda --seconds 120 --batch-size 16 --repeats 2 2>&1 | tail -2 | tee "${OUT:-/tmp}/audio_higgs.log"
