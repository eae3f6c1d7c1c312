# Shared settings for the Dataflow launch scripts; sourced, not run.
#
# Required: PROJECT (GCP project id), BUCKET (gs://bucket, no trailing slash).
# Optional: REGION, IMAGE (worker image, infra/Dockerfile), TRIMODAL (the launcher command),
#           MAX_WORKERS, CPU_MACHINE_TYPE, GPU_MACHINE_TYPE.
set -euo pipefail

: "${PROJECT:?set PROJECT to your GCP project id}"
: "${BUCKET:?set BUCKET to gs://your-bucket (no trailing slash)}"
REGION="${REGION:-us-central1}"
IMAGE="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/trimodal/worker:latest}"
MAX_WORKERS="${MAX_WORKERS:-32}"
# The launcher: the console script, or the worker image itself (same paths, same versions):
#   TRIMODAL="docker run --rm --entrypoint trimodal -v $HOME/.config/gcloud:/root/.config/gcloud:ro $IMAGE"
read -r -a LAUNCH <<< "${TRIMODAL:-trimodal}"

# Options every job gets. use_runner_v2 is the default for Python on Dataflow; naming it keeps
# the scripts explicit. sdk_location=container: the image already holds the SDK.
DATAFLOW_OPTS=(
  --runner=DataflowRunner
  --project="${PROJECT}"
  --region="${REGION}"
  --temp_location="${BUCKET}/tmp"
  --staging_location="${BUCKET}/staging"
  --sdk_container_image="${IMAGE}"
  --sdk_location=container
  --experiments=use_runner_v2
  --max_num_workers="${MAX_WORKERS}"
)

# GPU workers (image_text.sh, audio_text.sh): GPU_OPTS below.
# g2-standard-8 = 8 vCPUs + 32 GB RAM + one NVIDIA L4 (24 GB). Dataflow starts one SDK process
# per vCPU; each loads the tokenizer model once (apache_beam.utils.shared), so 8 copies share
# the GPU: pick a smaller g2 machine for a bigger model, or append ";use_nvidia_mps" to the
# worker_accelerator option so that the processes share the GPU through NVIDIA MPS.
GPU_MACHINE_TYPE="${GPU_MACHINE_TYPE:-g2-standard-8}"
GPU_OPTS=(
  --machine_type="${GPU_MACHINE_TYPE}"
  "--dataflow_service_options=worker_accelerator=type:nvidia-l4;count:1;install-nvidia-driver"
  --disk_size_gb=100
)

# CPU workers for text tokenization and mixing.
CPU_MACHINE_TYPE="${CPU_MACHINE_TYPE:-n2-standard-8}"
CPU_OPTS=(--machine_type="${CPU_MACHINE_TYPE}")

run() {
  echo "+ ${LAUNCH[*]} $*" >&2
  "${LAUNCH[@]}" "$@"
}

# dataset_args INPUT NAME: the tokenize scripts' two arguments, and the text tokenizer they share.
dataset_args() {
  INPUT="${1:?input glob}"
  NAME="${2:?dataset name}"
  TEXT_TOKENIZER="${TEXT_TOKENIZER:-${BUCKET}/tokenizers/text.model}"
}

# tokenize COMMAND [options...]: `trimodal pipeline COMMAND` on INPUT into $BUCKET/datasets/$NAME
# with TEXT_TOKENIZER, 128 MB shards and the Dataflow options; the caller adds its own.
tokenize() {
  local cmd=$1
  shift
  run pipeline "${cmd}" \
    --input "${INPUT}" \
    --text-tokenizer "${TEXT_TOKENIZER}" \
    --out "${BUCKET}/datasets/${NAME}" \
    --source "${NAME}" \
    --shard-mb 128 \
    "${DATAFLOW_OPTS[@]}" \
    "$@" \
    --job_name="trimodal-${cmd}-${NAME//_/-}"
}
