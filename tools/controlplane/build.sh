#!/usr/bin/env bash
# Build the local control plane from upstream Go modules, one wrapper module per component at its own pins
# (KServe v0.20 and Knative 1.19 pin different k8s.io minors, so one go.mod cannot hold them).
#
#   tools/controlplane/build.sh [COMPONENT...]     build (or reuse) the named components; default: all
#   tools/controlplane/build.sh --bindir COMPONENT  print the cached bin folder of a component (no build)
#
# Binaries are cached outside the repository, keyed by a hash of the component's go.mod + go.sum, this script
# and the Go version, under ${CLINRISK_TOOLS_CACHE:-$HOME/.cache/clinrisk}/controlplane/<component>-<key>/.
# A clean clone on the same machine therefore reuses them, and a pin change rebuilds. GOCACHE/GOMODCACHE
# keep their default (persistent) locations, so even a rebuild after a pin change is mostly incremental.
# Nothing built here is committed. A failed build prints one line naming the component and its log file.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${CLINRISK_TOOLS_CACHE:-$HOME/.cache/clinrisk}/controlplane"
GO="${GO:-$(command -v go || echo /usr/local/go/bin/go)}"
ALL=(kubernetes etcd kwok knative kserve cni coredns nodeimages)

# Version stamped into the Kubernetes binaries: a plain `go build` reports v0.0.0-master, which Knative's
# minimum-version check (>= v1.32) and `kubectl version` would see.
KUBE_VERSION="v1.34.0"
KUBE_BUILD_DATE="2025-08-27T00:00:00Z"   # fixed, so the binaries are reproducible

packages() {
  case "$1" in
    kubernetes) echo "k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet k8s.io/kubernetes/cmd/kube-proxy" ;;
    etcd) echo "go.etcd.io/etcd/server/v3" ;;
    kwok) echo "sigs.k8s.io/kwok/cmd/kwok" ;;
    knative) echo "./gen/controller knative.dev/serving/cmd/webhook knative.dev/serving/cmd/autoscaler" ;;
    kserve) echo "github.com/kserve/kserve/cmd/manager" ;;
    # the data node (cluster.sh node-up): CNI plugins, cluster DNS, and the images no registry serves here
    cni) echo "github.com/containernetworking/plugins/plugins/main/bridge github.com/containernetworking/plugins/plugins/main/loopback github.com/containernetworking/plugins/plugins/ipam/host-local" ;;
    coredns) echo "github.com/coredns/coredns" ;;
    nodeimages) echo "./pause ./netcheck" ;;
    *) return 1 ;;
  esac
}

ldflags() {
  case "$1" in
    kubernetes)
      local major="${KUBE_VERSION#v}"; major="${major%%.*}"
      local minor="${KUBE_VERSION#v*.}"; minor="${minor%%.*}"
      local f="-s -w" pkg
      for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        f+=" -X ${pkg}.gitVersion=${KUBE_VERSION} -X ${pkg}.gitMajor=${major} -X ${pkg}.gitMinor=${minor}"
        f+=" -X ${pkg}.gitTreeState=clean -X ${pkg}.buildDate=${KUBE_BUILD_DATE}"
      done
      echo "$f" ;;
    *) echo "-s -w" ;;
  esac
}

# The key covers exactly what determines a component's binaries: its go.mod/go.sum, its package list,
# ldflags and source patches, and the Go version; editing another part of this script rebuilds nothing.
# Source patches, printed as the shell that applies them (so the text is part of the cache key).
# Knative's controller serves health probes on a hard-coded :8080, which is also the autoscaler's hard-coded
# stats port; out of cluster both share one network namespace. The controller is therefore built from
# upstream's cmd/controller/main.go with one added line that disables its probe server (the webhook's own
# main already does the same). Every reconciler is upstream's, unchanged.
patches() {
  case "$1" in
    knative) cat <<'PATCH'
# `go list -m` names the module's folder only once it is in the module cache; a fresh machine has none yet.
"$GO" mod download knative.dev/serving
src="$("$GO" list -m -f '{{.Dir}}' knative.dev/serving)/cmd/controller/main.go"
mkdir -p gen/controller
sed 's|^\tctx := signals.NewContext()$|&\n\tctx = sharedmain.WithHealthProbesDisabled(ctx) // clinrisk: :8080 is the autoscaler stats port here|' \
  "$src" > gen/controller/main.go
grep -q WithHealthProbesDisabled gen/controller/main.go
PATCH
    ;;
  esac
}

cache_key() {
  { cat "$HERE/$1/go.mod" "$HERE/$1/go.sum"; packages "$1"; ldflags "$1"; patches "$1"; "$GO" version; } \
    | sha256sum | cut -c1-16
}

bindir() { echo "$CACHE/$1-$(cache_key "$1")/bin"; }

build_one() {
  local comp="$1" out log start secs
  out="$(bindir "$comp")"
  if [[ -f "$out/.complete" ]]; then
    echo "cached: $comp -> $out"
    return 0
  fi
  mkdir -p "$CACHE/logs" "$out"
  log="$CACHE/logs/build-$comp.log"
  start=$(date +%s)
  echo "building: $comp (log: $log)"
  # CGO off and tags selinux,notest as upstream's hack/lib/golang.sh builds the server binaries.
  if ! (cd "$HERE/$comp" && GO="$GO" GOFLAGS=-mod=mod bash -euo pipefail -c "$(patches "$comp")" && CGO_ENABLED=0 GOFLAGS=-mod=mod nice -n 10 "$GO" build -trimpath \
          -tags selinux,notest -ldflags "$(ldflags "$comp")" -o "$out/" $(packages "$comp")) >"$log" 2>&1; then
    echo "error: build $comp: go build failed (log: $log)" >&2
    return 1
  fi
  # etcd's main package is the module root (go.etcd.io/etcd/server/v3): go build names the binary "server".
  if [[ "$comp" == etcd && -f "$out/server" ]]; then mv "$out/server" "$out/etcd"; fi
  secs=$(( $(date +%s) - start ))
  echo "$secs" > "$out/.build-seconds"
  touch "$out/.complete"
  echo "built: $comp in ${secs}s -> $out"
}

if [[ "${1:-}" == "--report" ]]; then  # cold build seconds recorded per cached component
  for c in "${ALL[@]}"; do
    d="$(bindir "$c")"
    if [[ -f "$d/.complete" ]]; then echo "$c: built in $(cat "$d/.build-seconds")s ($d)"; else echo "$c: not built"; fi
  done
  exit 0
fi
if [[ "${1:-}" == "--bindir" ]]; then
  packages "${2:-}" >/dev/null || { echo "error: --bindir: unknown component '${2:-}' (one of: ${ALL[*]})" >&2; exit 2; }
  bindir "$2"; exit 0
fi
if ! command -v "$GO" >/dev/null 2>&1; then
  echo "error: go: not found (install Go >= 1.25, e.g. /usr/local/go/bin/go)" >&2; exit 2
fi
comps=("$@"); [[ ${#comps[@]} -eq 0 ]] && comps=("${ALL[@]}")
rc=0
for c in "${comps[@]}"; do
  packages "$c" >/dev/null || { echo "error: $c: unknown component (one of: ${ALL[*]})" >&2; exit 2; }
  build_one "$c" || rc=1
done
exit $rc
