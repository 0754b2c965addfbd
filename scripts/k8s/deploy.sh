#!/usr/bin/env bash
# Apply the clinrisk namespace, RBAC, NetworkPolicies and the InferenceService for a profile.
#   deploy.sh kind                       manifests/overlays/kind as is
#   deploy.sh gke                        overlays/gke with REGISTRY, MODEL_URI, GSA substituted
#   USECASE=leads deploy.sh kind|gke     another use case: manifests/overlays/<usecase>-<profile>, under
#                                        the use case's namespace and InferenceService name
# MODEL_URI (required): the registered bundle's storage URI (`clinrisk storage-uri` prints it); the
# overlays' own storageUri is a placeholder that nothing has uploaded.
set -euo pipefail
if [[ -z "${MODEL_URI:-}" ]]; then
  echo "error: MODEL_URI: not set (the storage URI of a registered bundle, e.g. s3://mlflow/1/models/m-…/artifacts/artifacts/bundle)" >&2
  exit 2
fi
# shellcheck source=scripts/k8s/lib.sh
source "$(dirname "$0")/lib.sh"
PROFILE="${1:-kind}"
USECASE="${USECASE:-clinical}"
# The use case's namespace and InferenceService name (UseCaseNames); an unknown one lists the known ones.
read -r NAMESPACE ISVC < <("$REPO_ROOT/.venv/bin/python" -c 'import sys
from clinrisk.errors import ConfigError
from clinrisk.usecases import get
try:
    names = get(sys.argv[1]).names
except ConfigError as exc:
    sys.exit(f"error: USECASE: {exc}")
print(names.namespace, names.model_name)' "$USECASE") || exit 2
OVERLAY="$PROFILE"
if [[ "$USECASE" != clinical ]]; then
  OVERLAY="$USECASE-$PROFILE"
fi
if [[ ! -d "$REPO_ROOT/manifests/overlays/$OVERLAY" ]]; then
  echo "error: manifests/overlays/$OVERLAY: no such overlay (profiles: kind, gke)" >&2
  exit 2
fi
TAG="${TAG:-$("$REPO_ROOT/.venv/bin/python" -c 'import clinrisk; print(clinrisk.__version__)')}"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# A generated kustomization wraps the overlay, so the checked-in files never carry site values.
overlay_rel="$(realpath --relative-to="$WORK" "$REPO_ROOT/manifests/overlays/$OVERLAY")"
{
  echo "apiVersion: kustomize.config.k8s.io/v1beta1"
  echo "kind: Kustomization"
  echo "resources: [\"$overlay_rel\"]"
  echo "images:"
  if [[ "$PROFILE" == "gke" ]]; then
    : "${REGISTRY:?set REGISTRY}"
    # the gke overlay already renamed the image to its documented default registry path
    echo "  - {name: europe-west4-docker.pkg.dev/clinrisk-project/clinrisk/serving, newName: \"$REGISTRY/serving\", newTag: \"$TAG\"}"
  else
    echo "  - {name: clinrisk/serving, newTag: \"$TAG\"}"
  fi
  if [[ -n "${MODEL_URI:-}" || -n "${GSA:-}" ]]; then
    echo "patches:"
  fi
  if [[ -n "${MODEL_URI:-}" ]]; then
    echo "  - target: {kind: InferenceService, name: $ISVC}"
    echo "    patch: |-"
    echo "      - {op: replace, path: /spec/predictor/containers/0/env/0/value, value: \"$MODEL_URI\"}"
    echo "      - {op: replace, path: /metadata/annotations/clinrisk.io~1model-uri, value: \"$MODEL_URI\"}"
  fi
  if [[ -n "${GSA:-}" ]]; then
    echo "  - target: {kind: ServiceAccount, name: clinrisk-predictor}"
    echo "    patch: |-"
    echo "      - {op: replace, path: /metadata/annotations/iam.gke.io~1gcp-service-account, value: \"$GSA\"}"
  fi
} >"$WORK/kustomization.yaml"

log "applying overlay $OVERLAY"
"$KUBECTL" kustomize "$WORK" >"$WORK/rendered.yaml"
"$KUBECTL" apply --server-side -f "$WORK/rendered.yaml"
"$KUBECTL" -n "$NAMESPACE" get inferenceservice "$ISVC"
