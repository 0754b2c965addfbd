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
K apply --server-side -f "https://github.com/knative/serving/releases/download/$KNATIVE_VERSION/serving-crds.yaml"
K apply --server-side -f "https://github.com/knative/serving/releases/download/$KNATIVE_VERSION/serving-core.yaml"
K apply --server-side -f "https://github.com/knative/net-kourier/releases/download/$KOURIER_VERSION/kourier.yaml"
K patch configmap/config-network -n knative-serving --type merge \
  -p '{"data":{"ingress-class":"kourier.ingress.networking.knative.dev"}}'
# Restricted PodSecurity in the clinrisk namespace: Knative must give queue-proxy a restricted context.
K patch configmap/config-features -n knative-serving --type merge -p '{"data":{"secure-pod-defaults":"enabled"}}'
# Images loaded with `kind load` are not in any registry: skip Knative's tag-to-digest resolution.
K patch configmap/config-deployment -n knative-serving --type merge \
  -p '{"data":{"registries-skipping-tag-resolving":"kind.local,ko.local,dev.local,docker.io,index.docker.io"}}'
if [[ "$PROFILE" == "kind" ]]; then
  # sslip.io-free local DNS: requests carry the Host header; Kourier on NodePort 31080.
  K patch configmap/config-domain -n knative-serving --type merge -p '{"data":{"example.com":""}}'
  K patch service/kourier -n kourier-system --type merge \
    -p '{"spec":{"type":"NodePort","ports":[{"name":"http2","port":80,"protocol":"TCP","targetPort":8080,"nodePort":31080}]}}'
fi
wait_deployments knative-serving
wait_deployments kourier-system

log "KServe $KSERVE_VERSION (Serverless)"
K apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve.yaml"
wait_deployments kserve
K apply --server-side -f "https://github.com/kserve/kserve/releases/download/$KSERVE_VERSION/kserve-cluster-resources.yaml"
K patch configmap/inferenceservice-config -n kserve --type merge \
  -p '{"data":{"deploy":"{\"defaultDeploymentMode\":\"Serverless\"}"}}'

log "Kubeflow Pipelines $KFP_VERSION (standalone)"
K apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=$KFP_VERSION"
K wait --for condition=established --timeout=120s crd/applications.app.k8s.io
K apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=$KFP_VERSION"
wait_deployments kubeflow

if [[ "$PROFILE" == "kind" ]]; then
  "$REPO_ROOT/scripts/k8s/install-minio.sh"
fi
