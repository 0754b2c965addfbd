#!/usr/bin/env bash
# `make cluster-down`: delete the kind cluster (kind profile), or remove the clinrisk namespace and the
# MLflow release from the current context (gke profile; the platform components stay).
set -euo pipefail
# shellcheck source=scripts/k8s/lib.sh
source "$(dirname "$0")/lib.sh"
PROFILE="${PROFILE:-${1:-kind}}"
if [[ "$PROFILE" == "kind" ]]; then
  need kind
  kind delete cluster --name "$CLUSTER_NAME"
else
  "$HELM" uninstall mlflow --namespace mlflow || true
  "$KUBECTL" delete namespace "$NAMESPACE" --ignore-not-found
fi
