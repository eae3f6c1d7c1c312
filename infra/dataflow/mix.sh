#!/usr/bin/env bash
# Tokenized datasets → mixed shards packed to L (CPU workers).
#
#   PROJECT=my-proj BUCKET=gs://my-bucket SEQ_LEN=3256 infra/dataflow/mix.sh \
#       mix-v1 c4=1 cc3m=1 librispeech=1
#
# $1 output name ($BUCKET/datasets/$1); then NAME=WEIGHT pairs naming datasets under
# $BUCKET/datasets/. ROWS (default: until the first source is exhausted), SEED, SEQ_LEN.
source "$(dirname "$0")/common.sh"
OUT="${1:?output name}"
shift
[[ $# -ge 1 ]] || { echo "give NAME=WEIGHT pairs" >&2; exit 2; }
INPUTS=()
WEIGHTS=()
for pair in "$@"; do
  INPUTS+=("${pair%%=*}=${BUCKET}/datasets/${pair%%=*}")
  WEIGHTS+=("${pair#*=}")
done
EXTRA=()
if [[ -n "${ROWS:-}" ]]; then EXTRA+=(--rows "${ROWS}"); fi

run pipeline mix \
  --inputs "${INPUTS[@]}" \
  --weights "${WEIGHTS[@]}" \
  --seq-len "${SEQ_LEN:-3256}" \
  --seed "${SEED:-0}" \
  --out "${BUCKET}/datasets/${OUT}" \
  --shard-mb 256 \
  "${EXTRA[@]}" \
  "${DATAFLOW_OPTS[@]}" "${CPU_OPTS[@]}" \
  --job_name="trimodal-mix-${OUT//_/-}"
