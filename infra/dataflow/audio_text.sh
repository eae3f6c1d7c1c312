#!/usr/bin/env bash
# Audio-transcript corpus (JSON-lines manifests with audio paths + text, or WebDataset tars
# with flac/wav/mp3 + txt) → tokenized shards; DAC encodes on one NVIDIA L4 per worker.
#
#   PROJECT=my-proj BUCKET=gs://my-bucket IMAGE=...:cu infra/dataflow/audio_text.sh \
#       'gs://my-bucket/raw/librispeech/*.jsonl' librispeech
#
# Same image and weight notes as image_text.sh (the DAC weight file is a local path).
source "$(dirname "$0")/common.sh"
INPUT="${1:?input glob}"
NAME="${2:?dataset name}"
TEXT_TOKENIZER="${TEXT_TOKENIZER:-${BUCKET}/tokenizers/text.model}"
AUDIO_TOKENIZER="${AUDIO_TOKENIZER:-/opt/trimodal/weights/weights_44khz_8kbps_0.0.1.pth}"

run pipeline audio-text \
  --input "${INPUT}" \
  --text-tokenizer "${TEXT_TOKENIZER}" \
  --audio-tokenizer "${AUDIO_TOKENIZER}" \
  --out "${BUCKET}/datasets/${NAME}" \
  --source "${NAME}" \
  --codebooks "${CODEBOOKS:-4}" \
  --max-seconds 30 \
  --device cuda \
  --batch-size "${BATCH_SIZE:-8}" \
  --shard-mb 128 \
  "${DATAFLOW_OPTS[@]}" \
  --machine_type="${GPU_MACHINE_TYPE}" \
  "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver" \
  --disk_size_gb=100 \
  --job_name="trimodal-audio-text-${NAME//_/-}"
