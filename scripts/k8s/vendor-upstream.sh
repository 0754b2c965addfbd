#!/usr/bin/env bash
# Re-vendor the upstream platform manifests into manifests/upstream/ from the Go module sources pinned by
# tools/controlplane/{knative,kserve}/go.sum (so the bytes are anchored by the Go checksum database), then
# rewrite manifests/upstream/SHA256SUMS. Run only when a pin changes; the test suite verifies the sums.
#
#   knative-serving-v1.19.0/serving-crds.yaml  = serving config/core/300-resources + knative.dev/networking CRDs
#                                                + knative.dev/caching Image CRD (what the release's
#                                                serving-crds.yaml holds; module zips drop serving's symlinks)
#   knative-serving-v1.19.0/serving-core.yaml  = namespace, RBAC, ConfigMaps, webhooks, Deployments, Services
#                                                (images stay ko:// references: nothing here runs them)
#   kserve-v0.20.0/kserve.yaml                 = `kubectl kustomize config/default` (the release file's source)
#   kserve-v0.20.0/*.yaml CRDs                 = config/crd/full (unchanged since first vendored)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
KUBECTL="${KUBECTL:-$ROOT/.tools/k8s/kubectl}"
OUT="$ROOT/manifests/upstream"

moddir() {  # moddir WRAPPER MODULE -> source folder of MODULE at the version WRAPPER pins (downloads if needed)
  (cd "$ROOT/tools/controlplane/$1" && "$GO" mod download -json "$2" >/dev/null && "$GO" list -m -f '{{.Dir}}' "$2")
}
cat_docs() {  # concatenate YAML files as separate documents, skipping Go placeholder files
  local f
  for f in "$@"; do
    [[ "$f" == *.yaml ]] || continue
    printf -- '---\n# Source: %s\n' "${f#"$MODROOT"/}"
    cat "$f"
    printf '\n'
  done
}

SERVING="$(moddir knative knative.dev/serving)"
NETWORKING="$(moddir knative knative.dev/networking)"
CACHING="$(moddir knative knative.dev/caching)"
KSERVE="$(moddir kserve github.com/kserve/kserve)"
MODROOT="$("$GO" env GOMODCACHE)"

KN="$OUT/knative-serving-v1.19.0"
mkdir -p "$KN"
cat_docs "$SERVING"/config/core/300-resources/*.yaml \
         "$NETWORKING"/config/{certificate,domain-claim,ingress,serverlessservice}.yaml \
         "$CACHING"/config/image.yaml > "$KN/serving-crds.yaml"
cat_docs "$SERVING"/config/core/100-namespace.yaml \
         "$SERVING"/config/core/200-roles/*.yaml \
         "$SERVING"/config/core/200-serviceaccount.yaml \
         "$SERVING"/config/core/configmaps/*.yaml \
         "$NETWORKING"/config/config-network.yaml \
         "$SERVING"/config/core/webhooks/*.yaml \
         "$SERVING"/config/core/deployments/{controller,webhook,autoscaler,activator}.yaml \
         > "$KN/serving-core.yaml"

KS="$OUT/kserve-v0.20.0"
mkdir -p "$KS"
"$KUBECTL" kustomize "$KSERVE/config/default" > "$KS/kserve.yaml"
"$KUBECTL" kustomize "$KSERVE/config/configmap" > "$KS/inferenceservice-config.yaml"
# The release sets the default ClusterStorageContainer's image with `kustomize edit set image`; same here.
"$KUBECTL" kustomize "$KSERVE/config/storagecontainers" \
  | sed "s|kserve/storage-initializer:latest|kserve/storage-initializer:v0.20.0|" > "$KS/storagecontainer-default.yaml"

# KWOK's default stages (node initialize/heartbeat, pod ready/complete/delete): standalone kwok has none.
KWOK="$(moddir kwok sigs.k8s.io/kwok)"
mkdir -p "$OUT/kwok-v0.8.0"
"$KUBECTL" kustomize "$KWOK/kustomize/stage/fast" > "$OUT/kwok-v0.8.0/stages.yaml"

# Each folder is a kustomize base, so manifests/platform/* can patch the pinned bytes without copying them.
cat > "$KN/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [serving-crds.yaml, serving-core.yaml]
YAML
cat > "$KS/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [kserve.yaml, inferenceservice-config.yaml, storagecontainer-default.yaml]
YAML

(cd "$OUT" && find . -name '*.yaml' | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum) > "$OUT/SHA256SUMS.new"
{ echo "# sha256 of every vendored upstream file; verified by tests/k8s/test_manifests.py."
  echo "# Regenerate with scripts/k8s/vendor-upstream.sh after changing a pin."
  cat "$OUT/SHA256SUMS.new"; } > "$OUT/SHA256SUMS"
rm -f "$OUT/SHA256SUMS.new"
echo "vendored into $OUT:"; sed -n '3,$p' "$OUT/SHA256SUMS"
