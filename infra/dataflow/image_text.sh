#!/usr/bin/env bash
# Image-caption corpus (img2dataset WebDataset tars, Parquet, folder + captions) → tokenized
# shards; MoVQGAN encodes on one NVIDIA L4 per worker.
#
#   PROJECT=my-proj BUCKET=gs://my-bucket IMAGE=...:cu infra/dataflow/image_text.sh \
#       'gs://my-bucket/raw/cc3m/*.tar' cc3m
#
# IMAGE must be built with CUDA torch (infra/README.md). The MoVQGAN checkpoint is read from a
# local path (torch.load): bake it into the image (infra/weights/) and launch from the image, or
# keep a copy at the same path on the launcher.
source "$(dirname "$0")/common.sh"
INPUT="${1:?input glob}"
NAME="${2:?dataset name}"
TEXT_TOKENIZER="${TEXT_TOKENIZER:-${BUCKET}/tokenizers/text.model}"
IMAGE_TOKENIZER="${IMAGE_TOKENIZER:-/opt/trimodal/weights/movqgan_270M.ckpt}"

run pipeline image-text \
  --input "${INPUT}" \
  --text-tokenizer "${TEXT_TOKENIZER}" \
  --image-tokenizer "${IMAGE_TOKENIZER}" \
  --out "${BUCKET}/datasets/${NAME}" \
  --source "${NAME}" \
  --device cuda \
  --batch-size "${BATCH_SIZE:-32}" \
  --shard-mb 128 \
  "${DATAFLOW_OPTS[@]}" \
  "${GPU_OPTS[@]}" \
  --job_name="trimodal-image-text-${NAME//_/-}"
