#!/usr/bin/env bash
# `make cluster [PROFILE=kind|gke]`: the whole clinrisk stack.
#   kind: create the kind cluster, install cert-manager, Knative Serving + Kourier, KServe (serverless),
#         standalone KFP, MinIO, MLflow (+ Postgres), load the images, apply the kind overlay.
#   gke:  use the current kube context (or KUBE_CONTEXT), push images to REGISTRY, same stack without
#         MinIO (GCS), apply the gke overlay with REGISTRY/MODEL_BUCKET substituted.
set -euo pipefail
# shellcheck source=scripts/k8s/lib.sh
source "$(dirname "$0")/lib.sh"
PROFILE="${PROFILE:-${1:-kind}}"
TAG="${TAG:-$("$REPO_ROOT/.venv/bin/python" -c 'import clinrisk; print(clinrisk.__version__)')}"

case "$PROFILE" in
  kind)
    need kind docker
    if ! kind get clusters | grep -qx "$CLUSTER_NAME"; then
      log "creating kind cluster $CLUSTER_NAME ($KIND_NODE_IMAGE)"
      kind create cluster --name "$CLUSTER_NAME" --image "$KIND_NODE_IMAGE" \
        --config "$REPO_ROOT/manifests/kind/cluster.yaml" --wait 120s
    fi
    "$KUBECTL" config use-context "kind-$CLUSTER_NAME"
    ;;
  gke)
    : "${REGISTRY:?set REGISTRY, e.g. europe-west4-docker.pkg.dev/PROJECT/clinrisk}"
    if [[ -n "${KUBE_CONTEXT:-}" ]]; then "$KUBECTL" config use-context "$KUBE_CONTEXT"; fi
    ;;
  *) echo "error: PROFILE must be kind or gke, got $PROFILE" >&2; exit 2 ;;
esac

"$REPO_ROOT/scripts/k8s/install-platform.sh" "$PROFILE"

log "building images (tag $TAG)"
"$REPO_ROOT/images/build.sh" all   # pipeline, serving and mlflow
if [[ "$PROFILE" == "kind" ]]; then
  for image in pipeline serving mlflow; do
    kind load docker-image --name "$CLUSTER_NAME" "clinrisk/$image:$TAG"
  done
else
  for image in pipeline serving mlflow; do
    docker tag "clinrisk/$image:$TAG" "$REGISTRY/$image:$TAG"
    docker push "$REGISTRY/$image:$TAG"
  done
fi

"$REPO_ROOT/scripts/k8s/install-mlflow.sh" "$PROFILE"
# The InferenceService needs a registered bundle: at bring-up the object store is empty, so it is deployed
# only when MODEL_URI names one (else: train + register first, then `MODEL_URI=… scripts/k8s/deploy.sh`).
if [[ -n "${MODEL_URI:-}" ]]; then
  "$REPO_ROOT/scripts/k8s/deploy.sh" "$PROFILE"
else
  log "no MODEL_URI: InferenceService not deployed yet (run the pipeline, then MODEL_URI=<storage URI> scripts/k8s/deploy.sh $PROFILE)"
fi
log "done: see docs/kubernetes.md for port-forwards (KFP UI, MLflow UI) and the V1 endpoint"
