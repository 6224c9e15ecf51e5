#!/usr/bin/env bash
# A real single-node Kubernetes on this machine, in a network namespace of its
# own with no uplink: etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, containerd + runc, the kubelet and kube-proxy. Settings and
# their reasons: docs/real-node.md (from shared/reference/real-node-recipe.md).
#
#   hack/node.sh up DIR [IMAGE_TAR...]   start; images are imported into containerd
#   hack/node.sh down DIR                stop everything, leave nothing behind
#   hack/node.sh exec DIR CMD...         run CMD inside the node's network namespace
#
# With NODE_CREDENTIAL_PROVIDER=<stevedore-credential-provider binary>,
# NODE_CREDENTIAL_PROVIDER_MATCH=<host:port> and
# NODE_CREDENTIAL_PROVIDER_AUDIENCE=<a Registry's token audience>, the kubelet
# pulls matching images with each pod's own ServiceAccount token.
#
# `up` writes DIR/env (KUBECONFIG, NODE_IP, NODE_NETNS, CONTAINERD_ADDRESS, …)
# for `source`. Needs root (network namespaces, containerd, the kubelet).
set -euo pipefail

HACK="$(cd "$(dirname "$0")" && pwd)"
NODE_IP=10.200.0.1
POD_CIDR=10.201.0.0/24
SVC_CIDR=10.202.0.0/24
SVC_IP=10.202.0.1
NODE_NAME=stevedore-node
PAUSE_IMAGE=stevedore.local/pause:1
SYSCTLS=(vm.overcommit_memory kernel.panic kernel.panic_on_oops)

log() { echo "node.sh: $*" >&2; }
die() { log "$*"; exit 1; }

usage() { sed -n "2,19p" "$0" >&2; exit 2; }

[[ $# -ge 2 ]] || usage
cmd="$1"; DIR="$(mkdir -p "$2" && cd "$2" && pwd)"; shift 2
NS="stevedore-$(basename "$DIR" | tr -c 'a-zA-Z0-9\n' - | tail -c 20)"
# Only the network namespace: mounts and cgroups stay the host's, so the
# kubelet's and containerd's mounts are visible (and cleaned) from here.
in_ns() { nsenter --net="/run/netns/$NS" "$@"; }

# bg NAME CMD...: start CMD inside the namespace, logs to DIR/logs/NAME.log.
bg() {
  local name="$1"; shift
  # nsenter execs CMD, so $! is CMD's own PID (a function here would not be).
  nsenter --net="/run/netns/$NS" "$@" >"$DIR/logs/$name.log" 2>&1 &
  echo "$!" >"$DIR/pids/$name"
}

wait_for() { # wait_for SECONDS WHAT CMD...
  local deadline=$((SECONDS + $1)) what="$2"; shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || die "timed out waiting for $what (logs in $DIR/logs)"
    sleep 0.5
  done
}

certs() {
  local d="$DIR/pki"; mkdir -p "$d"; cd "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 2 -subj /CN=stevedore-node-ca 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  # cert NAME CN [O] [SANs]
  cert() {
    local name="$1" cn="$2" o="${3:-}" san="${4:-}" subj="/CN=$2"
    [[ -n "$o" ]] && subj="/O=$o/CN=$cn"
    openssl req -newkey rsa:2048 -nodes -keyout "$name.key" -out "$name.csr" -subj "$subj" 2>/dev/null
    local ext=""
    if [[ -n "$san" ]]; then ext="subjectAltName=$san"; else ext="extendedKeyUsage=clientAuth"; fi
    openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" -days 2 \
      -extfile <(echo "$ext") 2>/dev/null
    rm -f "$name.csr"
  }
  cert apiserver kube-apiserver "" "IP:$NODE_IP,IP:$SVC_IP,IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert kubelet "$NODE_NAME" "" "IP:$NODE_IP,DNS:$NODE_NAME"
  cert admin admin system:masters
  cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  cert node "system:node:$NODE_NAME" system:nodes
  cert controller-manager system:kube-controller-manager
  cert scheduler system:kube-scheduler
  cert proxy system:kube-proxy
  for who in admin node controller-manager scheduler proxy; do
    cat >"$DIR/$who.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: node
  cluster: {server: "https://$NODE_IP:6443", certificate-authority: "$d/ca.crt"}
users:
- name: $who
  user: {client-certificate: "$d/$who.crt", client-key: "$d/$who.key"}
contexts:
- name: node
  context: {cluster: node, user: $who, namespace: default}
current-context: node
KC
  done
  cd - >/dev/null
}

network() {
  ip netns add "$NS"
  in_ns ip link set lo up
  # The node IP on a bridge with no ports; Service IPs routed into another,
  # so they go nowhere unless kube-proxy rewrites them. No default route.
  in_ns ip link add node0 type bridge
  in_ns ip addr add "$NODE_IP/32" dev node0
  in_ns ip link set node0 up
  in_ns ip link add svc0 type bridge
  in_ns ip link set svc0 up
  in_ns ip route add "$SVC_CIDR" dev svc0
  mkdir -p "$DIR/cni"
  cat >"$DIR/cni/10-stevedore.conflist" <<CNI
{
  "cniVersion": "1.0.0",
  "name": "stevedore",
  "plugins": [
    {"type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "ranges": [[{"subnet": "$POD_CIDR"}]], "dataDir": "$DIR/cni-ipam",
              "routes": [{"dst": "$NODE_IP/32"}, {"dst": "$SVC_CIDR"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
CNI
}

# check_isolated: nothing in the namespace can reach beyond the machine.
check_isolated() {
  local routes
  routes="$(in_ns ip -4 route show table all | grep -v '^local\|^broadcast' || true)"
  if grep -q '^default' <<<"$routes"; then die "the node namespace has a default route: $routes"; fi
  if in_ns ip -o link show | awk -F': ' '{print $2}' | grep -qvE '^(lo|node0|svc0|cni0|veth[^@]*)(@.*)?$'; then
    die "the node namespace has an unexpected interface: $(in_ns ip -o link show | awk -F': ' '{print $2}')"
  fi
}

control_plane() {
  local k="$1" pki="$DIR/pki"
  bg etcd "$k/etcd" --data-dir "$DIR/etcd" --listen-client-urls http://127.0.0.1:2379 \
    --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:2380 \
    --unsafe-no-fsync --log-level warn
  wait_for 60 etcd in_ns curl -sf http://127.0.0.1:2379/health
  bg kube-apiserver "$k/kube-apiserver" --etcd-servers http://127.0.0.1:2379 \
    --bind-address "$NODE_IP" --advertise-address "$NODE_IP" --secure-port 6443 \
    --service-cluster-ip-range "$SVC_CIDR" --service-node-port-range 30000-32767 \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --api-audiences https://kubernetes.default.svc.cluster.local \
    --authorization-mode Node,RBAC --enable-admission-plugins NodeRestriction \
    --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
    --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP --allow-privileged=true \
    --profiling=false --v=1
  wait_for 120 kube-apiserver in_ns "$k/kubectl" --kubeconfig "$DIR/admin.kubeconfig" get --raw /readyz
  bg kube-controller-manager "$NODE_BIN/kube-controller-manager" --kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$DIR/controller-manager.kubeconfig" \
    --use-service-account-credentials --service-account-private-key-file "$pki/sa.key" \
    --root-ca-file "$pki/ca.crt" --cluster-signing-cert-file "$pki/ca.crt" --cluster-signing-key-file "$pki/ca.key" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 10257 --profiling=false \
    --controllers '*'
  bg kube-scheduler "$NODE_BIN/kube-scheduler" --kubeconfig "$DIR/scheduler.kubeconfig" \
    --authentication-kubeconfig "$DIR/scheduler.kubeconfig" --authorization-kubeconfig "$DIR/scheduler.kubeconfig" \
    --leader-elect=false --bind-address 127.0.0.1 --secure-port 10259 --profiling=false
}

runtime() {
  mkdir -p "$DIR/containerd" "$DIR/certs.d"
  cat >"$DIR/containerd/config.toml" <<TOML
version = 2
root = "$DIR/containerd/root"
state = "$DIR/containerd/state"
[grpc]
  address = "$DIR/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # runc may not lower oom_score_adj here (no CAP_SYS_RESOURCE).
  restrict_oom_score_adj = true
  enable_unprivileged_ports = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$DIR/cni"
  [plugins."io.containerd.grpc.v1.cri".registry]
    config_path = "$DIR/certs.d"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      SystemdCgroup = false
TOML
  bg containerd containerd --config "$DIR/containerd/config.toml"
  wait_for 60 containerd ctr --address "$DIR/containerd.sock" version
  local tar
  for tar in "$DIR/pause.tar" "$@"; do
    ctr --address "$DIR/containerd.sock" -n k8s.io images import --no-unpack=false "$tar" >/dev/null
  done
}

kubelet() {
  local pki="$DIR/pki"
  mkdir -p "$DIR/kubelet" "$DIR/pod-logs"
  echo "nameserver 127.0.0.1" >"$DIR/resolv.conf"
  cat >"$DIR/kubelet.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: $NODE_IP
port: 10250
healthzBindAddress: 127.0.0.1
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: "$pki/ca.crt"}
authorization: {mode: Webhook}
tlsCertFile: "$pki/kubelet.crt"
tlsPrivateKeyFile: "$pki/kubelet.key"
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
oomScoreAdj: 0
containerRuntimeEndpoint: "unix://$DIR/containerd.sock"
podLogsDir: "$DIR/pod-logs"
resolvConf: "$DIR/resolv.conf"
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%", imagefs.available: "1%"}
registerNode: true
maxPods: 60
YAML
  local cp_args=()
  if [[ -n "${NODE_CREDENTIAL_PROVIDER:-}" ]]; then
    # The kubelet hands each pod's ServiceAccount token (for the audience
    # below) to the plugin, which answers it as the registry's password
    # (KEP-4412; docs/workload-identity.md).
    mkdir -p "$DIR/credential-provider"
    cp "$NODE_CREDENTIAL_PROVIDER" "$DIR/credential-provider/stevedore-credential-provider"
    cat >"$DIR/credential-provider.yaml" <<YAML
apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
- name: stevedore-credential-provider
  apiVersion: credentialprovider.kubelet.k8s.io/v1
  matchImages: ["${NODE_CREDENTIAL_PROVIDER_MATCH:?}"]
  defaultCacheDuration: "0s"
  tokenAttributes:
    serviceAccountTokenAudience: "${NODE_CREDENTIAL_PROVIDER_AUDIENCE:?}"
    requireServiceAccount: true
    cacheType: Token
  args: ["--max-cache-duration=10m", "--expiry-margin=5m"]
YAML
    cp_args=(--image-credential-provider-config "$DIR/credential-provider.yaml"
      --image-credential-provider-bin-dir "$DIR/credential-provider")
  fi
  save_sysctls
  bg kubelet "$NODE_BIN/kubelet" --config "$DIR/kubelet.yaml" --kubeconfig "$DIR/node.kubeconfig" \
    --root-dir "$DIR/kubelet" --node-ip "$NODE_IP" --hostname-override "$NODE_NAME" \
    "${cp_args[@]}" --v=1
  cat >"$DIR/kube-proxy.yaml" <<YAML
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: iptables
clusterCIDR: $POD_CIDR
hostnameOverride: $NODE_NAME
bindAddress: $NODE_IP
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
nodePortAddresses: ["$NODE_IP/32"]
oomScoreAdj: 0
clientConnection: {kubeconfig: "$DIR/proxy.kubeconfig"}
conntrack: {maxPerCore: 0, min: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
YAML
  bg kube-proxy "$NODE_BIN/kube-proxy" --config "$DIR/kube-proxy.yaml" --v=1
}

save_sysctls() {
  [[ -f "$DIR/sysctls" ]] && return
  local s; for s in "${SYSCTLS[@]}"; do echo "$s=$(sysctl -n "$s")"; done >"$DIR/sysctls"
}

# packages: the node's Debian packages, installed when missing.
packages() {
  local missing=()
  command -v containerd >/dev/null || missing+=(containerd)
  command -v runc >/dev/null || missing+=(runc)
  [[ -x /usr/lib/cni/bridge && -x /usr/lib/cni/host-local ]] || missing+=(containernetworking-plugins)
  command -v iptables >/dev/null || missing+=(iptables)
  command -v conntrack >/dev/null || missing+=(conntrack)
  command -v nsenter >/dev/null || missing+=(util-linux)
  command -v openssl >/dev/null || missing+=(openssl)
  command -v curl >/dev/null || missing+=(curl)
  ((${#missing[@]} == 0)) && return
  log "installing ${missing[*]} (apt)"
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 || \
    { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
}

kc() { in_ns "$KUBECTL" --kubeconfig "$DIR/admin.kubeconfig" "$@"; }

up() {
  [[ $EUID -eq 0 ]] || die "needs root (network namespaces, containerd, the kubelet)"
  local k; k="$("$HACK/envtest-assets.sh")"; NODE_BIN="$("$HACK/node-assets.sh")"; KUBECTL="$k/kubectl"
  packages
  mkdir -p "$DIR/logs" "$DIR/pids"
  local start=$SECONDS
  CGO_ENABLED=0 go build -trimpath -o "$DIR/bin/linux_$(go env GOARCH)/pause" "$HACK/node/pause"
  (cd "$HACK/.." && go run ./hack/mkimage -bin-dir "$DIR/bin" -platforms "linux/$(go env GOARCH)" -binaries pause \
    -entrypoint /pause -ca-certs "" -ref "$PAUSE_IMAGE" -tarball "$DIR/pause.tar" \
    -tarball-platform "linux/$(go env GOARCH)" >/dev/null)
  certs
  network
  check_isolated
  control_plane "$k"
  runtime "$@"
  kubelet
  wait_for 120 "node Ready" kc wait --for=condition=Ready "node/$NODE_NAME" --timeout=1s
  wait_for 60 "the default ServiceAccount" kc get serviceaccount default
  check_isolated
  cat >"$DIR/env" <<ENV
export KUBECONFIG="$DIR/admin.kubeconfig"
export NODE_IP=$NODE_IP NODE_NAME=$NODE_NAME NODE_NETNS=$NS NODE_DIR="$DIR"
export CONTAINERD_ADDRESS="$DIR/containerd.sock" NODE_CERTS_D="$DIR/certs.d"
export KUBECTL="$KUBECTL"
export NODE_CREDENTIAL_PROVIDER_MATCH="${NODE_CREDENTIAL_PROVIDER_MATCH:-}" NODE_CREDENTIAL_PROVIDER_AUDIENCE="${NODE_CREDENTIAL_PROVIDER_AUDIENCE:-}"
ENV
  log "node Ready in $((SECONDS - start))s; source $DIR/env; run clients with: hack/node.sh exec $DIR CMD"
}

down() {
  local p name
  # Pods first, so their mounts and cgroups go with them.
  if [[ -S "$DIR/containerd.sock" ]] && command -v crictl >/dev/null; then
    crictl -r "unix://$DIR/containerd.sock" rmp -af >/dev/null 2>&1 || true
  fi
  for name in kubelet kube-proxy kube-scheduler kube-controller-manager kube-apiserver etcd; do
    p="$DIR/pids/$name"; [[ -f "$p" ]] && kill "$(cat "$p")" 2>/dev/null || true
  done
  # The kubelet is gone: stop the containers it left, then containerd.
  if [[ -f "$DIR/pids/containerd" ]] && kill -0 "$(cat "$DIR/pids/containerd")" 2>/dev/null; then
    local sock="$DIR/containerd.sock" c
    # Pod network namespaces (/run/netns/cni-*) outlive their sandboxes when
    # nothing tears them down through CRI: note them for deletion below.
    for c in $(ctr --address "$sock" -n k8s.io containers ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io containers info "$c" 2>/dev/null | grep -o '/netns/cni-[0-9a-f-]*' | sed 's|.*/||'
    done | sort -u >"$DIR/pod-netns" || true
    for c in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks kill -s SIGKILL "$c" >/dev/null 2>&1 || true
    done
    sleep 1
    for c in $(ctr --address "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
      ctr --address "$sock" -n k8s.io tasks delete -f "$c" >/dev/null 2>&1 || true
    done
    kill "$(cat "$DIR/pids/containerd")" 2>/dev/null || true
  fi
  # Shims outlive containerd; they hold mounts under DIR.
  pkill -f "containerd-shim-runc-v2 .*-address $DIR/containerd.sock" 2>/dev/null || true
  local deadline=$((SECONDS + 15))
  for p in "$DIR"/pids/*; do
    [[ -f "$p" ]] || continue
    while kill -0 "$(cat "$p")" 2>/dev/null && ((SECONDS < deadline)); do sleep 0.2; done
    kill -9 "$(cat "$p")" 2>/dev/null || true
  done
  grep -o " $DIR/[^ ]*" /proc/mounts | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  # The pods' cgroups (cgroupfs driver: kubepods under every controller).
  find /sys/fs/cgroup -depth -type d -path '*kubepods*' -exec rmdir {} + 2>/dev/null || true
  if [[ -f "$DIR/pod-netns" ]]; then
    while read -r p; do ip netns del "$p" 2>/dev/null || true; done <"$DIR/pod-netns"
  fi
  ip netns del "$NS" 2>/dev/null || true
  if [[ -f "$DIR/sysctls" ]]; then
    while IFS='=' read -r k v; do sysctl -qw "$k=$v" || true; done <"$DIR/sysctls"
  fi
  rm -rf "$DIR"
}

case "$cmd" in
  up) up "$@" ;;
  down) down ;;
  exec) exec nsenter --net="/run/netns/$NS" "$@" ;;
  *) usage ;;
esac
