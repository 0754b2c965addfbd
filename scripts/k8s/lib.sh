#!/usr/bin/env bash
# Helpers shared by the bring-up scripts: pinned tool lookup and waits.
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/k8s/versions.sh
source "$REPO_ROOT/scripts/k8s/versions.sh"

# Prefer the pinned binaries from `make k8s-tools`; fall back to PATH.
KUBECTL="${KUBECTL:-$(if [[ -x "$REPO_ROOT/.tools/k8s/kubectl" ]]; then echo "$REPO_ROOT/.tools/k8s/kubectl"; else command -v kubectl; fi)}"
HELM="${HELM:-$(if [[ -x "$REPO_ROOT/.tools/k8s/helm" ]]; then echo "$REPO_ROOT/.tools/k8s/helm"; else command -v helm; fi)}"
export KUBECTL HELM

log() { printf '\n==> %s\n' "$*"; }

need() {
  local tool
  for tool in "$@"; do
    command -v "$tool" >/dev/null 2>&1 || { echo "error: $tool not found on PATH" >&2; exit 1; }
  done
}

wait_deployments() {
  local ns="$1"
  "$KUBECTL" -n "$ns" wait --for=condition=Available deployment --all --timeout=600s
}
