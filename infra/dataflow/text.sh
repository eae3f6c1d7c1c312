#!/usr/bin/env bash
# Text corpus (JSONL / Parquet / txt in a bucket) → tokenized shards, on CPU workers.
#
#   PROJECT=my-proj BUCKET=gs://my-bucket infra/dataflow/text.sh 'gs://my-bucket/raw/c4/*.jsonl.gz' c4
#
# $1 input glob, $2 dataset name (output: $BUCKET/datasets/$2). TEXT_TOKENIZER may be a bucket
# URL (the SentencePiece model is read through fsspec by the launcher and by every worker).
source "$(dirname "$0")/common.sh"
INPUT="${1:?input glob}"
NAME="${2:?dataset name}"
TEXT_TOKENIZER="${TEXT_TOKENIZER:-${BUCKET}/tokenizers/text.model}"

run pipeline text \
  --input "${INPUT}" \
  --text-tokenizer "${TEXT_TOKENIZER}" \
  --out "${BUCKET}/datasets/${NAME}" \
  --source "${NAME}" \
  --shard-mb 128 \
  "${DATAFLOW_OPTS[@]}" "${CPU_OPTS[@]}" \
  --job_name="trimodal-text-${NAME//_/-}"
