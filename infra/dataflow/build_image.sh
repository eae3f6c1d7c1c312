#!/usr/bin/env bash
# Build and push the worker image (run from anywhere; the build context is the repo root).
#
#   PROJECT=my-proj infra/dataflow/build_image.sh cpu     # text + mix workers
#   PROJECT=my-proj infra/dataflow/build_image.sh cuda    # image/audio GPU workers
#
# Needs docker with BuildKit and `gcloud auth configure-docker ${REGION}-docker.pkg.dev`.
set -euo pipefail
: "${PROJECT:?set PROJECT}"
REGION="${REGION:-us-central1}"
VARIANT="${1:-cpu}"
REPO_ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
TAG="${IMAGE:-${REGION}-docker.pkg.dev/${PROJECT}/trimodal/worker:${VARIANT}}"
case "${VARIANT}" in
  cpu) INDEX=https://download.pytorch.org/whl/cpu ;;
  cuda) INDEX=https://pypi.org/simple ;;
  *) echo "variant must be cpu or cuda" >&2; exit 2 ;;
esac
DOCKER_BUILDKIT=1 docker build -f "${REPO_ROOT}/infra/Dockerfile" \
  --build-arg TORCH_INDEX_URL="${INDEX}" -t "${TAG}" "${REPO_ROOT}"
docker push "${TAG}"
echo "${TAG}"
