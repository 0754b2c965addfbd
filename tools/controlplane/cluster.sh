#!/usr/bin/env bash
# A local Kubernetes control plane from the binaries tools/controlplane/build.sh builds: etcd, kube-apiserver
# (loopback, real TLS, service-account keys, RBAC, default admission plugins incl. PodSecurity),
# kube-controller-manager, kube-scheduler, and KWOK driving fake nodes and pod readiness.
#
#   tools/controlplane/cluster.sh up      start (build/reuse binaries first); prints the kubeconfig path
#   tools/controlplane/cluster.sh down    stop every process this script started, keep nothing
#   tools/controlplane/cluster.sh status  one line per process
#   tools/controlplane/cluster.sh node-up    add a real data node to the running plane (root): containerd + runc,
#                                            CNI bridge, kubelet, kube-proxy (iptables), CoreDNS; prints its name
#   tools/controlplane/cluster.sh node-down  stop it and undo what it did on the host (pods, mounts, bridge,
#                                            iptables chains); `down` does this first
#
# The data node is tainted clinrisk.io/data-node=true:NoSchedule: only pods that tolerate it run there, for
# real; every other pod keeps landing on the KWOK nodes. One data node per machine (bridge, port 53, iptables).
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
# The data node (node-up): its state, pod network and host ports.
NODE_DIR="$DIR/node"
NODE_NAME="${CLINRISK_NODE_NAME:-clinrisk-node-1}"
POD_CIDR="${CLINRISK_POD_CIDR:-10.88.0.0/24}"
BRIDGE="clinrisk0"
KUBELET_PORT="${CLINRISK_KUBELET_PORT:-10250}"
KUBELET_HEALTHZ_PORT="${CLINRISK_KUBELET_HEALTHZ_PORT:-10248}"
PROXY_HEALTHZ_PORT="${CLINRISK_PROXY_HEALTHZ_PORT:-10256}"
PROXY_METRICS_PORT="${CLINRISK_PROXY_METRICS_PORT:-10249}"
DNS_READY_PORT="${CLINRISK_DNS_READY_PORT:-18181}"
PAUSE_IMAGE="clinrisk.local/pause:1.0"
NETCHECK_IMAGE="clinrisk.local/netcheck:1.0"

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

client_cert() {  # client_cert NAME SUBJECT: a client certificate signed by the plane's CA (kept once made)
  local pki="$DIR/pki" name="$1" subj="$2"
  [[ -f "$pki/$name.crt" ]] && return 0
  echo "extendedKeyUsage=clientAuth" > "$pki/$name.ext"
  openssl req -newkey rsa:2048 -nodes -subj "$subj" -keyout "$pki/$name.key" -out "$pki/$name.csr" 2>/dev/null
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 3650 \
    -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
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
  # The API server's identity towards kubelets (logs, exec, port-forward), as kubeadm names it.
  client_cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client"
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
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority "$pki/ca.crt" \
    --kubelet-preferred-address-types InternalIP,Hostname \
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

stop_process() {  # stop_process NAME: TERM, up to 10 s, then KILL; forget its pid file
  local pid; pid="$(cat "$DIR/pids/$1" 2>/dev/null || true)"
  if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$DIR/pids/$1"
}

# ------------------------------------------------------------------------------------------- data node
node_ip() {  # the host's address on its default route (a kubelet refuses loopback as its node IP)
  local ip
  ip="$(ip -4 route get 1.1.1.1 2>/dev/null | awk '{for (i = 1; i < NF; i++) if ($i == "src") { print $(i + 1); exit }}')"
  [[ -n "$ip" ]] || ip="$(hostname -I 2>/dev/null | awk '{print $1}')"
  [[ -n "$ip" ]] || die "node-up: no non-loopback IPv4 address on this host for the kubelet"
  echo "$ip"
}

node_certs() {  # node_certs NODE_IP: the kubelet's client and serving certificates, kube-proxy's, CoreDNS's
  local pki="$DIR/pki" ip="$1"
  client_cert "node" "/O=system:nodes/CN=system:node:$NODE_NAME"
  client_cert "kube-proxy" "/CN=system:kube-proxy"
  client_cert "coredns" "/CN=clinrisk-coredns"
  printf 'subjectAltName=IP:%s,DNS:%s\nextendedKeyUsage=serverAuth\n' "$ip" "$NODE_NAME" > "$pki/kubelet-serving.ext"
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$NODE_NAME" -keyout "$pki/kubelet-serving.key" \
    -out "$pki/kubelet-serving.csr" 2>/dev/null
  openssl x509 -req -in "$pki/kubelet-serving.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
    -days 3650 -extfile "$pki/kubelet-serving.ext" -out "$pki/kubelet-serving.crt" 2>/dev/null
  rm -f "$pki/kubelet-serving.csr" "$pki/kubelet-serving.ext"
  local name; for name in node kube-proxy coredns; do kubeconfig "$name"; done
}

ctr_node() { ctr --address "$NODE_DIR/containerd.sock" --namespace k8s.io "$@"; }

node_up() {
  [[ "$(id -u)" == 0 ]] || die "node-up: needs root (containerd, runc, a bridge, iptables)"
  local cmd missing=()
  for cmd in containerd runc ctr ip iptables; do command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd"); done
  if (( ${#missing[@]} )) && command -v apt-get >/dev/null 2>&1; then
    # As make test-images installs docker.io: the runtime comes from Debian, not from a registry.
    mkdir -p "$DIR/logs"
    echo "node-up: installing containerd runc iptables iproute2 (apt; missing: ${missing[*]})" >&2
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q containerd runc iptables iproute2; } \
      >"$DIR/logs/apt.log" 2>&1 || die "node-up: apt-get install containerd runc iptables iproute2 failed (log: $DIR/logs/apt.log)"
  fi
  for cmd in containerd runc ctr ip iptables; do
    command -v "$cmd" >/dev/null 2>&1 || die "node-up: $cmd: not found (Debian: apt-get install containerd runc iptables iproute2)"
  done
  [[ -f "$DIR/admin.kubeconfig" ]] && "$KUBECTL" --kubeconfig "$DIR/admin.kubeconfig" get --raw /readyz >/dev/null 2>&1 \
    || die "node-up: the control plane is not running (run: $0 up)"
  "$HERE/build.sh" kubernetes cni coredns nodeimages >&2 || die "data-node build failed (see the line above)"
  local kbin cbin dbin ibin ip started; started=$(date +%s)
  kbin="$("$HERE/build.sh" --bindir kubernetes)"; cbin="$("$HERE/build.sh" --bindir cni)"
  dbin="$("$HERE/build.sh" --bindir coredns)"; ibin="$("$HERE/build.sh" --bindir nodeimages)"
  ip="$(node_ip)"
  mkdir -p "$NODE_DIR"/{containerd,runc,cni-conf,cni-ipam,kubelet,images} "$DIR/logs" "$DIR/pids"
  node_certs "$ip"
  local pki="$DIR/pki"

  # containerd + runc through the CRI plugin, everything under NODE_DIR. restrict_oom_score_adj: an
  # unprivileged-ish host (a VM sandbox here) refuses the pause container's oom_score_adj of -998.
  cat > "$NODE_DIR/containerd.toml" <<EOF
version = 2
root = "$NODE_DIR/containerd/root"
state = "$NODE_DIR/containerd/state"
[grpc]
  address = "$NODE_DIR/containerd.sock"
[plugins."io.containerd.internal.v1.opt"]
  path = "$NODE_DIR/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "$NODE_DIR/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "$cbin"
    conf_dir = "$NODE_DIR/cni-conf"
EOF
  cat > "$NODE_DIR/cni-conf/10-clinrisk.conflist" <<EOF
{"cniVersion": "1.0.0", "name": "clinrisk-pods", "plugins": [
  {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": true, "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "$NODE_DIR/cni-ipam", "ranges": [[{"subnet": "$POD_CIDR"}]],
            "routes": [{"dst": "0.0.0.0/0"}]}}
]}
EOF
  start containerd containerd --config "$NODE_DIR/containerd.toml"
  wait_for containerd 60 ctr_node version
  "$HERE/image_archive.py" "$ibin/pause" "$PAUSE_IMAGE" 65535 "$NODE_DIR/images/pause.tar"
  "$HERE/image_archive.py" "$ibin/netcheck" "$NETCHECK_IMAGE" 65534 "$NODE_DIR/images/netcheck.tar"
  ctr_node images import "$NODE_DIR/images/pause.tar" >/dev/null || die "node-up: ctr images import pause failed"
  ctr_node images import "$NODE_DIR/images/netcheck.tar" >/dev/null || die "node-up: ctr images import netcheck failed"

  cat > "$NODE_DIR/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$pki/kubelet-serving.crt"
tlsPrivateKeyFile: "$pki/kubelet-serving.key"
address: "$ip"
port: $KUBELET_PORT
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: $KUBELET_HEALTHZ_PORT
containerRuntimeEndpoint: "unix://$NODE_DIR/containerd.sock"
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
clusterDomain: cluster.local
clusterDNS: ["$ip"]
maxPods: 30
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
registerWithTaints:
  - {key: clinrisk.io/data-node, value: "true", effect: NoSchedule}
EOF
  start kubelet "$kbin/kubelet" --config "$NODE_DIR/kubelet.yaml" --kubeconfig "$DIR/node.kubeconfig" \
    --root-dir "$NODE_DIR/kubelet" --hostname-override "$NODE_NAME" --node-ip "$ip" \
    --node-labels "clinrisk.io/data-node=true"
  wait_for kubelet 120 "$KUBECTL" --kubeconfig "$DIR/admin.kubeconfig" wait --for condition=Ready \
    "node/$NODE_NAME" --timeout 5s

  start kube-proxy "$kbin/kube-proxy" --kubeconfig "$DIR/kube-proxy.kubeconfig" --hostname-override "$NODE_NAME" \
    --proxy-mode iptables --cluster-cidr "$POD_CIDR" \
    --healthz-bind-address "127.0.0.1:$PROXY_HEALTHZ_PORT" --metrics-bind-address "127.0.0.1:$PROXY_METRICS_PORT"
  wait_for kube-proxy 60 curl -fsS "http://127.0.0.1:$PROXY_HEALTHZ_PORT/healthz"

  # CoreDNS reads Services and EndpointSlices as its own user (upstream's system:coredns rules).
  cat <<EOF | "$KUBECTL" --kubeconfig "$DIR/admin.kubeconfig" apply --server-side -f - >/dev/null
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: clinrisk-coredns}
rules:
  - {apiGroups: [""], resources: [endpoints, services, pods, namespaces], verbs: [list, watch]}
  - {apiGroups: [discovery.k8s.io], resources: [endpointslices], verbs: [list, watch]}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: clinrisk-coredns}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: clinrisk-coredns}
subjects: [{apiGroup: rbac.authorization.k8s.io, kind: User, name: clinrisk-coredns}]
EOF
  cat > "$NODE_DIR/Corefile" <<EOF
.:53 {
    bind $ip
    errors
    ready 127.0.0.1:$DNS_READY_PORT
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        kubeconfig $DIR/coredns.kubeconfig clinrisk-local
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
}
EOF
  start coredns "$dbin/coredns" -conf "$NODE_DIR/Corefile"
  wait_for coredns 60 curl -fsS "http://127.0.0.1:$DNS_READY_PORT/ready"
  echo "data node $NODE_NAME ($ip) up in $(( $(date +%s) - started ))s (logs: $DIR/logs)" >&2
  echo "$NODE_NAME"
}

remove_kube_chains() {  # the iptables chains kube-proxy --cleanup leaves: the kubelet's KUBE-FIREWALL & co.
  local ipt table chain c
  for ipt in iptables ip6tables; do
    command -v "$ipt" >/dev/null 2>&1 || continue
    for table in filter nat mangle; do
      for chain in INPUT OUTPUT FORWARD PREROUTING POSTROUTING; do
        { "$ipt" -t "$table" -S "$chain" 2>/dev/null || true; } | { grep -- "-j KUBE-" || true; } | sed 's/^-A /-D /' \
          | while read -r rule; do eval "$ipt -t $table $rule" 2>/dev/null || true; done
      done
      for c in $({ "$ipt" -t "$table" -S 2>/dev/null || true; } | awk '/^-N KUBE-/ {print $2}'); do "$ipt" -t "$table" -F "$c" 2>/dev/null || true; done
      for c in $({ "$ipt" -t "$table" -S 2>/dev/null || true; } | awk '/^-N KUBE-/ {print $2}'); do "$ipt" -t "$table" -X "$c" 2>/dev/null || true; done
    done
  done
}

node_down() {
  [[ -d "$NODE_DIR" ]] || return 0
  local kcfg="$DIR/admin.kubeconfig" kbin t pid
  # Pods first, through the kubelet, so that it runs their teardown (containers, CNI, volumes).
  if [[ -f "$DIR/pids/kubelet" ]] && kill -0 "$(cat "$DIR/pids/kubelet")" 2>/dev/null \
      && "$KUBECTL" --kubeconfig "$kcfg" get --raw /readyz >/dev/null 2>&1; then
    "$KUBECTL" --kubeconfig "$kcfg" delete pods --all-namespaces --field-selector "spec.nodeName=$NODE_NAME" \
      --force --grace-period 0 --wait=false >/dev/null 2>&1 || true
    for _ in $(seq 1 60); do
      [[ -z "$(ctr_node tasks ls -q 2>/dev/null)" ]] && break
      sleep 0.5
    done
  fi
  stop_process coredns
  stop_process kube-proxy
  stop_process kubelet
  # What the kubelet did not get to: kill the tasks, then containerd and the shims it leaves running.
  if [[ -S "$NODE_DIR/containerd.sock" ]]; then
    for t in $(ctr_node tasks ls -q 2>/dev/null); do ctr_node tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    sleep 1
    for t in $(ctr_node tasks ls -q 2>/dev/null); do ctr_node tasks delete -f "$t" >/dev/null 2>&1 || true; done
  fi
  stop_process containerd
  for pid in $(pgrep -f "containerd-shim.*$NODE_DIR/containerd.sock" || true); do kill -9 "$pid" 2>/dev/null || true; done
  kbin="$("$HERE/build.sh" --bindir kubernetes)"
  [[ -x "$kbin/kube-proxy" ]] && "$kbin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  remove_kube_chains
  # Deepest first: pod volumes, netns pins, overlay rootfs, the kubelet's own bind of its root dir.
  awk '{print $5}' /proc/self/mountinfo | { grep "^$NODE_DIR/" || true; } | sort -r \
    | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  if "$KUBECTL" --kubeconfig "$kcfg" get --raw /readyz >/dev/null 2>&1; then
    "$KUBECTL" --kubeconfig "$kcfg" delete node "$NODE_NAME" --ignore-not-found >/dev/null 2>&1 || true
    "$KUBECTL" --kubeconfig "$kcfg" delete clusterrolebinding,clusterrole clinrisk-coredns --ignore-not-found \
      >/dev/null 2>&1 || true
  fi
  rm -rf "$NODE_DIR"
  echo "data node $NODE_NAME stopped" >&2
}

down() {
  node_down
  local name
  for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do stop_process "$name"; done
  rm -rf "$DIR/etcd"
  echo "control plane stopped" >&2
}

status() {
  local name pid
  for name in etcd kube-apiserver kube-controller-manager kube-scheduler kwok containerd kubelet kube-proxy coredns; do
    [[ "$name" == containerd && ! -d "$NODE_DIR" ]] && break
    pid="$(cat "$DIR/pids/$name" 2>/dev/null || true)"
    if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then echo "$name: running (pid $pid)"; else echo "$name: stopped"; fi
  done
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  node-up) node_up ;;
  node-down) node_down ;;
  *) echo "usage: $0 up|down|status|node-up|node-down" >&2; exit 2 ;;
esac
