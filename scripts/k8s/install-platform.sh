#!/usr/bin/env bash
# cert-manager, Knative Serving + Kourier, KServe (Knative mode), standalone KFP, and MinIO (kind only),
# all at the versions pinned in versions.sh. Idempotent (kubectl apply --server-side).
set -euo pipefail
# shellcheck source=scripts/k8s/lib.sh
source "$(dirname "$0")/lib.sh"
PROFILE="${1:-kind}"
K() { "$KUBECTL" "$@"; }

log "cert-manager $CERT_MANAGER_VERSION"
K apply --server-side -f "https://github.com/cert-manager/cert-manager/releases/download/$CERT_MANAGER_VERSION/cert-manager.yaml"
wait_deployments cert-manager

log "Knative Serving $KNATIVE_VERSION + Kourier $KOURIER_VERSION"
# Knative Serving from the vendored, sha256-pinned manifests plus this project's flags
# (manifests/platform/knative: podspec-securitycontext, secure-pod-defaults, Kourier, domain, tag resolution).
K apply --server-side -f "$REPO_ROOT/manifests/upstream/knative-serving-v1.19.0/serving-crds.yaml"
K wait --for condition=established --timeout=120s crd/services.serving.knative.dev crd/ingresses.networking.internal.knative.dev
K apply --server-side -k "$REPO_ROOT/manifests/platform/knative"
K apply --server-side -f "https://github.com/knative/net-kourier/releases/download/$KOURIER_VERSION/kourier.yaml"
if [[ "$PROFILE" == "kind" ]]; then
  # Kourier on NodePort 31080: requests carry the Host header of the predictor's Knative route.
  K patch service/kourier -n kourier-system --type merge \
    -p '{"spec":{"type":"NodePort","ports":[{"name":"http2","port":80,"protocol":"TCP","targetPort":8080,"nodePort":31080}]}}'
fi
wait_deployments knative-serving
wait_deployments kourier-system

log "KServe $KSERVE_VERSION (Serverless)"
# KServe from the vendored manifests plus manifests/platform/kserve: its Namespace (the release file has
# none), Serverless mode, disableIstioVirtualHost (no Istio), restricted storage-initializer (kserve#5373).
# The overlay holds both the CRDs and a ClusterStorageContainer: the first pass may refuse the latter
# until its CRD is established, so wait and apply again (server-side apply is idempotent).
if ! K apply --server-side -k "$REPO_ROOT/manifests/platform/kserve"; then
  K wait --for condition=established --timeout=120s crd/clusterstoragecontainers.serving.kserve.io
  K apply --server-side -k "$REPO_ROOT/manifests/platform/kserve"
fi
wait_deployments kserve
K apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve-cluster-resources.yaml"
K apply --server-side --force-conflicts -k "$REPO_ROOT/manifests/platform/kserve"  # re-assert the restricted storage-initializer

log "Kubeflow Pipelines $KFP_VERSION (standalone)"
K apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION"
K wait --for condition=established --timeout=120s crd/applications.app.k8s.io
K apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$KFP_VERSION"
wait_deployments kubeflow

if [[ "$PROFILE" == "kind" ]]; then
  "$REPO_ROOT/scripts/k8s/install-minio.sh"
fi
