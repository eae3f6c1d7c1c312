#!/usr/bin/env bash
# Text corpus (JSONL / Parquet / txt in a bucket) → tokenized shards, on CPU workers.
#
#   PROJECT=my-proj BUCKET=gs://my-bucket infra/dataflow/text.sh 'gs://my-bucket/raw/c4/*.jsonl.gz' c4
#
# $1 input glob, $2 dataset name (output: $BUCKET/datasets/$2). TEXT_TOKENIZER may be a bucket
# URL (the SentencePiece model is read through fsspec by the launcher and by every worker).
source "$(dirname "$0")/common.sh"
dataset_args "$@"

tokenize text "${CPU_OPTS[@]}"
