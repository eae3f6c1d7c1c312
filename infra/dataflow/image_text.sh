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
dataset_args "$@"
IMAGE_TOKENIZER="${IMAGE_TOKENIZER:-/opt/trimodal/weights/movqgan_270M.ckpt}"

tokenize image-text \
  --image-tokenizer "${IMAGE_TOKENIZER}" \
  --device cuda \
  --batch-size "${BATCH_SIZE:-32}" \
  "${GPU_OPTS[@]}"
