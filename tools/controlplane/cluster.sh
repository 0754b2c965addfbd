#!/usr/bin/env bash
# A local Kubernetes control plane from the binaries tools/controlplane/build.sh builds: etcd, kube-apiserver
# (loopback, real TLS, service-account keys, RBAC, default admission plugins incl. PodSecurity),
# kube-controller-manager, kube-scheduler, and KWOK driving fake nodes and pod readiness.
#
#   tools/controlplane/cluster.sh up      start (build/reuse binaries first); prints the kubeconfig path
#   tools/controlplane/cluster.sh down    stop every process this script started, keep nothing
#   tools/controlplane/cluster.sh status  one line per process
#
# State (certs, etcd data, logs, pids, kubeconfig) lives in ${CLINRISK_CLUSTER_DIR:-<repo>/.cluster}.
# A process that fails to start prints one line naming it and its log file.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
DIR="${CLINRISK_CLUSTER_DIR:-$ROOT/.cluster}"
KUBECTL="${KUBECTL:-$ROOT/.tools/k8s/kubectl}"
NODES="${CLINRISK_CLUSTER_NODES:-2}"
# Ports: fixed defaults on loopback, overridable (two stacks on one machine need different ones).
ETCD_PORT="${CLINRISK_ETCD_PORT:-23790}"
API_PORT="${CLINRISK_API_PORT:-16443}"
KCM_PORT="${CLINRISK_KCM_PORT:-16457}"
SCHED_PORT="${CLINRISK_SCHED_PORT:-16459}"
KWOK_PORT="${CLINRISK_KWOK_PORT:-16480}"

die() { echo "error: $*" >&2; exit 1; }

# ------------------------------------------------------------------------------------------- certificates
gen_certs() {
  local pki="$DIR/pki"
  [[ -f "$pki/.complete" ]] && return 0
  mkdir -p "$pki"
  (
    cd "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=clinrisk-local-ca" \
      -keyout ca.key -out ca.crt 2>/dev/null
    cat > apiserver.ext <<EOF
subjectAltName=IP:127.0.0.1,IP:10.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local
extendedKeyUsage=serverAuth
EOF
    openssl req -newkey rsa:2048 -nodes -subj "/CN=kube-apiserver" -keyout apiserver.key -out apiserver.csr 2>/dev/null
    openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile apiserver.ext -out apiserver.crt 2>/dev/null
    # Client identities the default RBAC bootstrap policy knows: admin (system:masters), controller
    # manager, scheduler; KWOK acts as the nodes' kubelets, so it runs as admin.
    local who
    for who in "admin:/O=system:masters/CN=clinrisk-admin" \
               "kube-controller-manager:/CN=system:kube-controller-manager" \
               "kube-scheduler:/CN=system:kube-scheduler"; do
      local name="${who%%:*}" subj="${who#*:}"
      echo "extendedKeyUsage=clientAuth" > client.ext
      openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$name.key" -out "$name.csr" 2>/dev/null
      openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile client.ext -out "$name.crt" 2>/dev/null
    done
    openssl genrsa -out sa.key 2048 2>/dev/null
    openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
    rm -f ./*.csr ./*.ext
  )
  touch "$pki/.complete"
}

kubeconfig() {  # kubeconfig NAME -> writes $DIR/NAME.kubeconfig with that client cert
  local name="$1" pki="$DIR/pki"
  cat > "$DIR/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: clinrisk-local
  cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$pki/ca.crt"}
users:
- name: $name
  user: {client-certificate: "$pki/$name.crt", client-key: "$pki/$name.key"}
contexts:
- name: clinrisk-local
  context: {cluster: clinrisk-local, user: $name}
current-context: clinrisk-local
EOF
}

# ------------------------------------------------------------------------------------------- processes
start() {  # start NAME CMD... : background process, pid file, log file
  local name="$1"; shift
  local log="$DIR/logs/$name.log"
  if [[ -f "$DIR/pids/$name" ]] && kill -0 "$(cat "$DIR/pids/$name")" 2>/dev/null; then
    return 0
  fi
  "$@" >"$log" 2>&1 &
  echo $! > "$DIR/pids/$name"
}

alive_or_die() {  # alive_or_die NAME
  local pid; pid="$(cat "$DIR/pids/$1" 2>/dev/null || true)"
  if [[ -z "$pid" ]] || ! kill -0 "$pid" 2>/dev/null; then
    die "$1: exited at start (log: $DIR/logs/$1.log: $(tail -n 1 "$DIR/logs/$1.log" 2>/dev/null | cut -c1-200))"
  fi
}

wait_for() {  # wait_for NAME SECONDS CMD... : poll CMD until it succeeds, the process dies, or time runs out
  local name="$1" secs="$2"; shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" >/dev/null 2>&1; do
    alive_or_die "$name"
    (( $(date +%s) < deadline )) || die "$name: not ready after ${secs}s (log: $DIR/logs/$name.log)"
    sleep 1
  done
}

up() {
  [[ -x "$KUBECTL" ]] || die "kubectl: not found at $KUBECTL (run: make k8s-tools)"
  "$HERE/build.sh" kubernetes etcd kwok >&2 || die "control-plane build failed (see the line above)"
  local kbin ebin wbin
  kbin="$("$HERE/build.sh" --bindir kubernetes)"
  ebin="$("$HERE/build.sh" --bindir etcd)"
  wbin="$("$HERE/build.sh" --bindir kwok)"
  mkdir -p "$DIR/logs" "$DIR/pids" "$DIR/etcd"
  gen_certs
  local name; for name in admin kube-controller-manager kube-scheduler; do kubeconfig "$name"; done
  local pki="$DIR/pki" started; started=$(date +%s)

  start etcd "$ebin/etcd" --name clinrisk --data-dir "$DIR/etcd" \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-advertise-peer-urls "http://127.0.0.1:$((ETCD_PORT + 1))" \
    --initial-cluster "clinrisk=http://127.0.0.1:$((ETCD_PORT + 1))" \
    --unsafe-no-fsync --quota-backend-bytes 2147483648
  wait_for etcd 60 curl -fsS "http://127.0.0.1:$ETCD_PORT/health"

  # Default admission plugins stay on (PodSecurity, ServiceAccount, NamespaceLifecycle, LimitRanger, ...).
  # --enable-aggregator-routing: webhook Services are resolved to their Endpoints, so webhooks served by
  # local processes are reachable through a selector-less Service with manual Endpoints.
  start kube-apiserver "$kbin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --secure-port "$API_PORT" --advertise-address 127.0.0.1 \
    --endpoint-reconciler-type none \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.0.0.0/24 \
    --authorization-mode Node,RBAC \
    --enable-aggregator-routing=true \
    --allow-privileged=false \
    --profiling=false
  wait_for kube-apiserver 180 "$KUBECTL" --kubeconfig "$DIR/admin.kubeconfig" get --raw /readyz

  start kube-controller-manager "$kbin/kube-controller-manager" \
    --kubeconfig "$DIR/kube-controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/kube-controller-manager.kubeconfig" \
    --authorization-kubeconfig "$DIR/kube-controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --use-service-account-credentials=true \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --service-cluster-ip-range 10.0.0.0/24 --cluster-cidr 10.244.0.0/16 --allocate-node-cidrs=false
  start kube-scheduler "$kbin/kube-scheduler" \
    --kubeconfig "$DIR/kube-scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/kube-scheduler.kubeconfig" \
    --authorization-kubeconfig "$DIR/kube-scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false
  wait_for kube-controller-manager 120 curl -fsSk "https://127.0.0.1:$KCM_PORT/healthz"
  wait_for kube-scheduler 120 curl -fsSk "https://127.0.0.1:$SCHED_PORT/healthz"

  # KWOK plays the kubelets of the fake nodes: node heartbeats, pods Running/Ready with an IP.
  start kwok "$wbin/kwok" --kubeconfig "$DIR/admin.kubeconfig" \
    --config "$ROOT/manifests/upstream/kwok-v0.8.0/stages.yaml" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --cidr 10.244.0.1/16 --node-ip 10.244.255.1 \
    --server-address "127.0.0.1:$KWOK_PORT"
  sleep 2; alive_or_die kwok
  local i
  for i in $(seq 1 "$NODES"); do
    # No taint: the workloads under test are scheduled exactly as on a real node.
    cat <<EOF | "$KUBECTL" --kubeconfig "$DIR/admin.kubeconfig" apply --server-side -f - >/dev/null
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-node-$i, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
EOF
  done
  wait_for kwok 60 "$KUBECTL" --kubeconfig "$DIR/admin.kubeconfig" wait --for condition=Ready node --all --timeout 5s
  echo "$(( $(date +%s) - started ))" > "$DIR/start-seconds"
  echo "control plane up in $(cat "$DIR/start-seconds")s (logs: $DIR/logs)" >&2
  echo "$DIR/admin.kubeconfig"
}

down() {
  local name pid
  for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    pid="$(cat "$DIR/pids/$name" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
      kill -9 "$pid" 2>/dev/null || true
    fi
    rm -f "$DIR/pids/$name"
  done
  rm -rf "$DIR/etcd"
  echo "control plane stopped" >&2
}

status() {
  local name pid
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler kwok; do
    pid="$(cat "$DIR/pids/$name" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
