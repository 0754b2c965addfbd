#!/usr/bin/env bash
# MLflow tracking server + Postgres from charts/mlflow (namespace mlflow). kind: artifacts in MinIO;
# gke: artifacts in gs://$MODEL_BUCKET through Workload Identity.
set -euo pipefail
# shellcheck source=scripts/k8s/lib.sh
source "$(dirname "$0")/lib.sh"
PROFILE="${1:-kind}"
TAG="${TAG:-$("$REPO_ROOT/.venv/bin/python" -c 'import clinrisk; print(clinrisk.__version__)')}"

"$KUBECTL" create namespace mlflow --dry-run=client -o yaml | "$KUBECTL" apply -f -
args=(upgrade --install mlflow "$REPO_ROOT/charts/mlflow" --namespace mlflow --wait --timeout 10m
  --set "image.tag=$TAG")
if [[ "$PROFILE" == "kind" ]]; then
  "$KUBECTL" -n mlflow create secret generic mlflow-s3 \
    --from-literal=AWS_ACCESS_KEY_ID="${MINIO_ACCESS_KEY:-clinrisk}" \
    --from-literal=AWS_SECRET_ACCESS_KEY="${MINIO_SECRET_KEY:-clinrisk-minio-dev}" \
    --dry-run=client -o yaml | "$KUBECTL" apply -f -
else
  : "${REGISTRY:?set REGISTRY}" "${MODEL_BUCKET:?set MODEL_BUCKET (GCS bucket for MLflow artifacts and bundles)}"
  args+=(--set "image.repository=$REGISTRY/mlflow" --set "artifacts.destination=gs://$MODEL_BUCKET/mlflow"
    --set "artifacts.s3.endpointUrl=" --set "artifacts.s3.credentialsSecret=")
  # Workload Identity: gs:// writes run as this Google service account, not the namespace default.
  if [[ -n "${MLFLOW_GSA:-}" ]]; then args+=(--set "serviceAccount.gcpServiceAccount=$MLFLOW_GSA"); fi
fi
log "MLflow (chart charts/mlflow)"
"$HELM" "${args[@]}"
