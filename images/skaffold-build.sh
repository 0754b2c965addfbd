#!/usr/bin/env bash
# Skaffold custom-build hook: builds one image with images/build.sh under the tag skaffold chose ($IMAGE)
# and pushes it when skaffold asks ($PUSH_IMAGE=true, e.g. the gke profile).
#   images/skaffold-build.sh pipeline|serving
set -euo pipefail
cd "$(dirname "$0")/.."
which="$1"
: "${IMAGE:?skaffold sets IMAGE}"
case "$which" in
  pipeline) PIPELINE_IMAGE="$IMAGE" images/build.sh pipeline ;;
  serving) SERVING_IMAGE="$IMAGE" images/build.sh serving ;;
  *) echo "usage: $0 pipeline|serving" >&2; exit 2 ;;
esac
if [[ "${PUSH_IMAGE:-false}" == "true" ]]; then
  docker push "$IMAGE"
fi
