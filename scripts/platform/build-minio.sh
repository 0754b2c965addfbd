#!/usr/bin/env bash
# Build the MinIO server from its Go module (github.com/minio/minio) at the release the kind overlay deploys
# (scripts/k8s/versions.sh MINIO_IMAGE), and cache the binary outside the repo so a clean clone reuses it.
# Prints the binary's path on stdout. The module is fetched through the Go module proxy (no container registry here).
set -euo pipefail
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=../k8s/versions.sh
source "$REPO_ROOT/scripts/k8s/versions.sh"
MINIO_MODULE_VERSION_DEFAULT="v0.0.0-20260212201848-7aac2a2c5b7c"
# The Go module proxy serves MinIO only as pseudo-versions (its RELEASE.* tags are not semver):
# MINIO_MODULE_VERSION pins the commit; versions.sh's MINIO_IMAGE names the release the kind overlay pulls.
RELEASE="${MINIO_MODULE_VERSION:-$MINIO_MODULE_VERSION_DEFAULT}"
CACHE="${CLINRISK_CACHE:-$HOME/.cache/clinrisk}/minio/$RELEASE"
BIN="$CACHE/minio"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
mkdir -p "$CACHE"
exec 9>"$CACHE/.lock"
flock 9   # one build at a time (concurrent checkouts on one machine share the cache)
if [[ -x "$BIN" ]] && "$BIN" --version >/dev/null 2>&1; then echo "$BIN"; exit 0; fi
[[ -x "$GO" ]] || { echo "error: go: not found (need Go to build MinIO $RELEASE)" >&2; exit 2; }
echo "building MinIO $RELEASE from its Go module (cold: many minutes on 2 cores; cached in $CACHE)" >&2
start=$(date +%s)
# `go mod download` fetches the pinned version through the proxy; building inside the module directory honours
# MinIO's own go.mod (replace directives included), which `go install mod@ver` would refuse.
info="$("$GO" mod download -json "github.com/minio/minio@$RELEASE")"
dir="$(printf '%s' "$info" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
[[ -d "$dir" ]] || { echo "error: github.com/minio/minio@$RELEASE: module download failed: $info" >&2; exit 2; }
(cd "$dir" && CGO_ENABLED=0 nice -n 10 "$GO" build -trimpath -o "$BIN.tmp" . ) >&2
mv "$BIN.tmp" "$BIN"
echo "built MinIO $RELEASE in $(( $(date +%s) - start ))s -> $BIN" >&2
echo "$(( $(date +%s) - start ))" > "$CACHE/build-seconds"
echo "$BIN"
