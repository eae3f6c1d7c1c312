#!/usr/bin/env bash
# Audio-transcript corpus (JSON-lines manifests with audio paths + text, or WebDataset tars
# with flac/wav/mp3 + txt) → tokenized shards; the codec encodes on one NVIDIA L4 per worker.
#
#   PROJECT=my-proj BUCKET=gs://my-bucket IMAGE=...:cu infra/dataflow/audio_text.sh \
#       'gs://my-bucket/raw/librispeech/*.jsonl' librispeech
#
# Same image and weight notes as image_text.sh (the codec is read from a local path).
source "$(dirname "$0")/common.sh"
dataset_args "$@"
# The paper's codec, Higgs Audio v2 (25 frames/s: 30 s clips fit the paper's rows of 3,256); a DAC
# weight file works too (weights_16khz.pth: 16 s per row at 4 codebooks; docs/vocabulary.md).
AUDIO_TOKENIZER="${AUDIO_TOKENIZER:-/opt/trimodal/weights/higgs-audio-v2-tokenizer}"

tokenize audio-text \
  --audio-tokenizer "${AUDIO_TOKENIZER}" \
  --codebooks "${CODEBOOKS:-4}" \
  --max-seconds 30 \
  --device cuda \
  --batch-size "${BATCH_SIZE:-8}" \
  "${GPU_OPTS[@]}"
