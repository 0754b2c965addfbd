#!/usr/bin/env bash
# Re-vendor the Dask Kubernetes operator's manifests into manifests/dask/upstream/ from the pinned
# dask-kubernetes release's sdist on PyPI (the sdist carries the operator's helm chart; pip checks its hash
# against PyPI's), then rewrite manifests/dask/upstream/SHA256SUMS. Run only when the pin changes.
#
#   dask-kubernetes-<v>/crds.yaml      = the chart's crds/ (DaskCluster, DaskWorkerGroup, DaskJob, DaskAutoscaler)
#   dask-kubernetes-<v>/operator.yaml  = `helm template` of the chart with its default values (ServiceAccount,
#                                        ClusterRole, ClusterRoleBinding, Deployment) in namespace dask-operator,
#                                        image tag = the release (the chart's "set-by-chartpress" placeholder)
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VERSION="2025.4.3"   # keep equal to scripts/cluster/dask-operator-venv.sh
HELM="${HELM:-$ROOT/.tools/k8s/helm}"
PY="${PY:-$ROOT/.venv/bin/python}"
OUT="$ROOT/manifests/dask/upstream"
[[ -x "$HELM" ]] || { echo "error: helm: $HELM missing (run make k8s-tools)" >&2; exit 2; }

WORK="$(mktemp -d)"; trap 'rm -rf "$WORK"' EXIT
"$PY" -m pip download -q --disable-pip-version-check --no-deps --no-binary :all: \
  "dask-kubernetes==$VERSION" -d "$WORK" >/dev/null
tar -xzf "$WORK"/dask_kubernetes-"$VERSION".tar.gz -C "$WORK"
CHART="$WORK/dask_kubernetes-$VERSION/dask_kubernetes/operator/deployment/helm/dask-kubernetes-operator"

D="$OUT/dask-kubernetes-$VERSION"
rm -rf "$D" && mkdir -p "$D"
for f in daskcluster daskworkergroup daskjob daskautoscaler; do
  printf -- '---\n# Source: dask-kubernetes-operator/crds/%s.yaml\n' "$f"
  cat "$CHART/crds/$f.yaml"
done > "$D/crds.yaml"
"$HELM" template dask-kubernetes-operator "$CHART" --namespace dask-operator --skip-crds \
  --set image.tag="$VERSION" > "$D/operator.yaml"
cat > "$D/kustomization.yaml" <<'YAML'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: dask-operator
resources: [crds.yaml, operator.yaml]
YAML

(cd "$OUT" && find . -name '*.yaml' | sed 's|^\./||' | LC_ALL=C sort | xargs sha256sum) > "$OUT/SHA256SUMS.new"
{ echo "# sha256 of every vendored dask-kubernetes file; verified by tests/cluster/test_dask_manifests.py."
  echo "# Regenerate with scripts/cluster/vendor-dask-operator.sh after changing the pin."
  cat "$OUT/SHA256SUMS.new"; } > "$OUT/SHA256SUMS"
rm -f "$OUT/SHA256SUMS.new"
echo "vendored into $OUT:"; sed -n '3,$p' "$OUT/SHA256SUMS"
