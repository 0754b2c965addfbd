#!/usr/bin/env bash
# The Dask Kubernetes operator (a kopf controller, Python) in its own cached venv, pinned to the release whose
# CRDs and RBAC are vendored in manifests/dask/upstream/ (scripts/cluster/vendor-dask-operator.sh). It is not part
# of the project's lock: in a cluster it runs from its own image. Prints the venv's bin folder on stdout.
#   CLINRISK_CACHE (default ~/.cache/clinrisk) holds it; a cold install is one pip run, then it is reused.
set -euo pipefail
DASK_KUBERNETES_VERSION="2025.4.3"
CACHE="${CLINRISK_CACHE:-$HOME/.cache/clinrisk}/dask-operator/$DASK_KUBERNETES_VERSION"
VENV="$CACHE/venv"
if [[ "$(cat "$VENV/.stamp" 2>/dev/null || true)" != "$DASK_KUBERNETES_VERSION" ]]; then
  rm -rf "$VENV" && mkdir -p "$CACHE" && python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "dask-kubernetes==$DASK_KUBERNETES_VERSION" >"$CACHE/pip.log" 2>&1 \
    || { echo "error: dask-kubernetes operator: pip install dask-kubernetes==$DASK_KUBERNETES_VERSION failed (log: $CACHE/pip.log)" >&2; exit 1; }
  echo "$DASK_KUBERNETES_VERSION" > "$VENV/.stamp"
fi
echo "$VENV/bin"
