#!/usr/bin/env bash
# Build the clinrisk pipeline, serving and mlflow images with plain `docker build` (no buildx, no registry).
#   images/build.sh [pipeline|serving|mlflow|all]      (mlflow is built FROM the pipeline image)
#   images/build.sh segmentation    the segmentation use case's two images: the pipeline and serving
#                                   images' dependency layers (built first; shared through the cache), the
#                                   JAX stack the others leave out, then the clinrisk wheel on top
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
MLFLOW_IMAGE="${MLFLOW_IMAGE:-clinrisk/mlflow:$TAG}"
SEGMENTATION_IMAGE="${CLINRISK_SEGMENTATION_IMAGE:-clinrisk/segmentation:$TAG}"
SEGMENTATION_SERVING_IMAGE="${CLINRISK_SEGMENTATION_SERVING_IMAGE:-clinrisk/segmentation-serving:$TAG}"
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
# The serving image gets only the closure of what `clinrisk serve` imports (no kfp, mlflow, matplotlib,
# scikit-learn): a subset of the same wheelhouse.
"$PYTHON" images/serving_requirements.py "$CTX/requirements-image.txt" > "$CTX/requirements-serving.txt"

# 1b. the mlflow image's extras (Postgres driver, boto3 for S3/MinIO), pinned in images/mlflow-requirements.txt.
mkdir -p "$CTX/wheels/mlflow"
cp images/mlflow-requirements.txt "$CTX/mlflow-requirements.txt"
MLFLOW_SUM="$(sha256sum images/mlflow-requirements.txt | cut -d' ' -f1)"
if [[ "$(cat "$CTX/wheels/mlflow/.sha256" 2>/dev/null || true)" != "$MLFLOW_SUM" ]]; then
  echo "building wheelhouse for images/mlflow-requirements.txt"
  rm -rf "$CTX/wheels/mlflow" && mkdir -p "$CTX/wheels/mlflow"
  "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps \
    -r images/mlflow-requirements.txt -w "$CTX/wheels/mlflow"
  echo "$MLFLOW_SUM" > "$CTX/wheels/mlflow/.sha256"
fi

# 2. the clinrisk wheel itself (always rebuilt: it is the code under test).
rm -f "$CTX"/wheels/clinrisk/*.whl
"$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation . -w "$CTX/wheels/clinrisk" \
  2>&1 | { grep -v 'is ignored: it is neither' || true; }

# 1c. the segmentation images' JAX stack: what each lacks of its base image's pins (jax + optax for the
# pipeline image, jax + pillow for the serving image), one wheelhouse for both.
segmentation_wheels() {
  "$PYTHON" images/segmentation_requirements.py "$CTX/requirements-image.txt" jax optax \
    > "$CTX/requirements-segmentation.txt"
  "$PYTHON" images/segmentation_requirements.py "$CTX/requirements-serving.txt" jax pillow \
    > "$CTX/requirements-segmentation-serving.txt"
  sort -u "$CTX/requirements-segmentation.txt" "$CTX/requirements-segmentation-serving.txt" \
    > "$CTX/requirements-segmentation-all.txt"
  local sum
  sum="$(sha256sum "$CTX/requirements-segmentation-all.txt" | cut -d' ' -f1)"
  if [[ "$(cat "$CTX/wheels/segmentation/.sha256" 2>/dev/null || true)" != "$sum" ]]; then
    echo "building wheelhouse for the segmentation images ($(tr '\n' ' ' < "$CTX/requirements-segmentation-all.txt"))"
    rm -rf "$CTX/wheels/segmentation" && mkdir -p "$CTX/wheels/segmentation"
    "$PYTHON" -m pip wheel -q --disable-pip-version-check --no-deps \
      -r "$CTX/requirements-segmentation-all.txt" -w "$CTX/wheels/segmentation"
    echo "$sum" > "$CTX/wheels/segmentation/.sha256"
  fi
}

build() {
  local dockerfile="$1" image="$2"
  echo "docker build $image (base $BASE_IMAGE)"
  docker build -q -f "$dockerfile" --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "PIPELINE_IMAGE=$PIPELINE_IMAGE" \
    --build-arg "SERVING_IMAGE=$SERVING_IMAGE" --label "org.opencontainers.image.version=$TAG" -t "$image" "$CTX"
  echo "$image: $(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}')"
}
case "$WHAT" in
  pipeline) build images/pipeline.Dockerfile "$PIPELINE_IMAGE" ;;
  serving) build images/serving.Dockerfile "$SERVING_IMAGE" ;;
  mlflow) build images/mlflow.Dockerfile "$MLFLOW_IMAGE" ;;
  all)
    build images/pipeline.Dockerfile "$PIPELINE_IMAGE"
    build images/serving.Dockerfile "$SERVING_IMAGE"
    build images/mlflow.Dockerfile "$MLFLOW_IMAGE"
    ;;
  segmentation)
    segmentation_wheels
    build images/pipeline.Dockerfile "$PIPELINE_IMAGE"
    build images/serving.Dockerfile "$SERVING_IMAGE"
    build images/segmentation.Dockerfile "$SEGMENTATION_IMAGE"
    build images/segmentation-serving.Dockerfile "$SEGMENTATION_SERVING_IMAGE"
    ;;
  *) echo "usage: $0 [pipeline|serving|mlflow|all|segmentation]" >&2; exit 2 ;;
esac
