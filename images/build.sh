#!/usr/bin/env bash
# Build the clinrisk pipeline and serving images with plain `docker build` (no buildx, no registry).
#   images/build.sh [pipeline|serving|all]
# Env: BASE_IMAGE (default python:3.11-slim if it can be found locally or pulled, else a local
#      debootstrap base from images/build-base.sh), TAG (default: package version), PYTHON (host python
#      used to build the wheelhouse; default .venv/bin/python).
# The wheelhouse (.whl/context/wheels/deps) is cached and rebuilt only when requirements.lock changes.
set -euo pipefail
cd "$(dirname "$0")/.."

WHAT="${1:-all}"
PYTHON="${PYTHON:-.venv/bin/python}"
TAG="${TAG:-$("$PYTHON" -c 'import clinrisk; print(clinrisk.__version__)')}"
PIPELINE_IMAGE="${PIPELINE_IMAGE:-clinrisk/pipeline:$TAG}"
SERVING_IMAGE="${SERVING_IMAGE:-clinrisk/serving:$TAG}"
LOCAL_BASE="clinrisk/base:3.11-bookworm"
CTX=".whl/context"

if [[ -z "${BASE_IMAGE:-}" ]]; then
  if docker image inspect python:3.11-slim >/dev/null 2>&1 || docker pull -q python:3.11-slim >/dev/null 2>&1; then
    BASE_IMAGE="python:3.11-slim"
  else
    echo "python:3.11-slim unavailable (no registry): using local debootstrap base $LOCAL_BASE"
    images/build-base.sh "$LOCAL_BASE"
    BASE_IMAGE="$LOCAL_BASE"
  fi
fi

# 1. wheelhouse for the pinned dependencies (host-built: containers here cannot reach the index).
mkdir -p "$CTX/wheels/deps" "$CTX/wheels/clinrisk"
grep -v -E '^\s*(#|$)' images/exclude-from-image.txt | sed 's/$/==/' > "$CTX/exclude.txt"
grep -v -i -F -f "$CTX/exclude.txt" requirements.lock | cat - images/requirements-extra.txt \
  | grep -v -E '^\s*(#|$)' > "$CTX/requirements-image.txt.new"
LOCK_SUM="$(sha256sum "$CTX/requirements-image.txt.new" | cut -d' ' -f1)"
if [[ "$(cat "$CTX/wheels/deps/.lock-sha256" 2>/dev/null || true)" != "$LOCK_SUM" ]]; then
  echo "building wheelhouse for requirements.lock ($LOCK_SUM)"
  rm -rf "$CTX/wheels/deps" && mkdir -p "$CTX/wheels/deps"
  "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps \
    -r "$CTX/requirements-image.txt.new" -w "$CTX/wheels/deps" 2>&1 | { grep -v 'is ignored: it is neither' || true; }
  echo "$LOCK_SUM" > "$CTX/wheels/deps/.lock-sha256"
fi
mv "$CTX/requirements-image.txt.new" "$CTX/requirements-image.txt"

# 2. the clinrisk wheel itself (always rebuilt: it is the code under test).
rm -f "$CTX"/wheels/clinrisk/*.whl
"$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation . -w "$CTX/wheels/clinrisk" \
  2>&1 | { grep -v 'is ignored: it is neither' || true; }

build() {
  local dockerfile="$1" image="$2"
  echo "docker build $image (base $BASE_IMAGE)"
  docker build -q -f "$dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" \
    --label "org.opencontainers.image.version=$TAG" -t "$image" "$CTX"
}
case "$WHAT" in
  pipeline) build images/pipeline.Dockerfile "$PIPELINE_IMAGE" ;;
  serving) build images/serving.Dockerfile "$SERVING_IMAGE" ;;
  all)
    build images/pipeline.Dockerfile "$PIPELINE_IMAGE"
    build images/serving.Dockerfile "$SERVING_IMAGE"
    ;;
  *) echo "usage: $0 [pipeline|serving|all]" >&2; exit 2 ;;
esac
