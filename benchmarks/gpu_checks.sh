#!/usr/bin/env bash
# GPU checks that fit a short GPU slot (run from the repo root on the lent CUDA machine):
#   benchmarks/gpu_checks.sh            # MFU + trainer vs plain loop, Higgs encode, audio pipeline
#   benchmarks/gpu_checks.sh --dry-run  # the same parts on the CPU, tiny sizes: checks the script
# Budget: the outer timeouts add up to 500 s (330 + 70 + 100), under the 540 s one command may
# take with room to spare; each inner timeout is smaller than its outer one (the MFU script keeps
# its children inside --budget-s 300). Every part writes as it goes, and gpu_checks.json (rc and
# timed-out flag per part, written after each part) is there even when a part is killed.
# Installs nothing (the GPU machine has no network): the python is $PYTHON, else python3 when it
# has the dependencies, else a carried .venv. The package tree is rebuilt each run (symlinks
# into the repo: a second run does not nest copies).
set -uo pipefail
DRY=0
[ "${1:-}" = "--dry-run" ] && { DRY=1; shift; }
# any further arguments go to bench_gpu_mfu.py (e.g. --batch 4 --steps 20)
REPO=$(pwd)
OUT=${OUT:-/tmp/gpu-checks}
mkdir -p "$OUT"
SUMMARY="$OUT/gpu_checks.json"

need='import numpy, torch, torchdata, yaml'
[ $DRY = 0 ] && need="$need; assert torch.cuda.is_available()"  # a carried CPU venv cannot run the GPU parts
PY=${PYTHON:-}
for c in python3 "$REPO/.venv/bin/python"; do
  if [ -z "$PY" ] && command -v "$c" >/dev/null 2>&1 && "$c" -c "$need" 2>/dev/null; then PY=$c; fi
done
if [ -z "$PY" ]; then
  echo '{"error": "no python with numpy, torch (with CUDA unless --dry-run), torchdata, yaml: set PYTHON to a carried venv (nothing is installed here)"}' > "$SUMMARY"
  cat "$SUMMARY"; exit 2
fi

PKG=/tmp/trimodal-gpu-pkg
rm -rf "$PKG" && mkdir -p "$PKG/trimodal"
for f in "$REPO"/trimodal/*; do ln -s "$f" "$PKG/trimodal/$(basename "$f")"; done
for d in tokenizers shards pipelines train experiments; do ln -sfn "$REPO/$d" "$PKG/trimodal/$d"; done
export PYTHONPATH="$PKG" PYTHONUNBUFFERED=1 TQDM_DISABLE=1

parts=()
record() {  # name rc: append to the summary (rewritten whole each time)
  local to=false; { [ "$2" = 124 ] || [ "$2" = 137 ]; } && to=true
  parts+=("\"$1\": {\"rc\": $2, \"timed_out\": $to}")
  local IFS=,
  printf '{"dry_run": %s, "python": "%s", "parts": {%s}, "mfu_json": "%s"}\n' \
    "$([ $DRY = 1 ] && echo true || echo false)" "$PY" "${parts[*]}" "$OUT/mfu.json" > "$SUMMARY"
}

if [ $DRY = 1 ]; then
  export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
  "$PY" -c "import torch; print('torch', torch.__version__, 'cpu dry run')"
  MFU=(--dry-run); HIGGS=(--device cpu --models tiny --clips 2 --seconds 1 --repeats 1)
  AUDIO=(--codec tiny --device cpu --seconds 8 --batch-size 4 --repeats 1)
else
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"
  MFU=(); HIGGS=(--device cuda --clock perf_counter --models full --full-clips 4 --full-seconds 10 --repeats 2)
  AUDIO=(--codec higgs --device cuda --seconds 60 --batch-size 16 --repeats 2)
fi

# 1. MFU at the ~1B config (packed rows, flex attention, compiled blocks) and the trainer's step
#    against a plain loop on the same rows and head; mfu.json is rewritten after every part
cd /tmp && timeout -k 5 330 "$PY" "$REPO/benchmarks/bench_gpu_mfu.py" --budget-s 300 --json "$OUT/mfu.json" \
  "${MFU[@]}" "$@" 2>&1 | tail -40 > "$OUT/mfu.log"
record mfu "${PIPESTATUS[0]}"
# 2. Higgs audio tokenizer throughput (random weights of the real size on CUDA)
cd /tmp && timeout -k 5 70 "$PY" "$REPO/benchmarks/bench_higgs_encode.py" "${HIGGS[@]}" 2>&1 | tail -3 > "$OUT/higgs.log"
record higgs "${PIPESTATUS[0]}"
# 3. the audio-text pipeline with the codec on the device vs a plain batched loop
cd /tmp && timeout -k 5 100 "$PY" "$REPO/benchmarks/bench_audio_pipeline.py" "${AUDIO[@]}" 2>&1 | tail -2 > "$OUT/audio.log"
record audio "${PIPESTATUS[0]}"
cat "$SUMMARY"
