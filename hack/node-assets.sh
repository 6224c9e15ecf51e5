#!/usr/bin/env bash
# Builds the node's Kubernetes components (kubelet, kube-proxy, kube-scheduler,
# kube-controller-manager) from the Go module proxy into a versioned cache
# directory outside the repo, and prints that directory. The API server, etcd
# and kubectl come from hack/envtest-assets.sh (same version, same wrapper).
#
# Idempotent: a warm cache returns at once; a lock keeps two runs apart.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"
CACHE_ROOT="${STEVEDORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stevedore}"
DEST="$CACHE_ROOT/node/k8s-${K8S_VERSION}"
CMDS=(kubelet kube-proxy kube-scheduler kube-controller-manager)

log() { echo "node-assets: $*" >&2; }
have_all() {
  local c
  for c in "${CMDS[@]}"; do [[ -x "$DEST/$c" ]] || return 1; done
}

if have_all; then echo "$DEST"; exit 0; fi
mkdir -p "$CACHE_ROOT/node"
exec 9>"$CACHE_ROOT/node/.lock"
flock 9
if have_all; then echo "$DEST"; exit 0; fi

# shellcheck source=hack/lib/kube-wrapper.sh
source "$(dirname "$0")/lib/kube-wrapper.sh"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
start=$SECONDS
kube_wrapper "$work/kube" "$K8S_VERSION"
log "building ${CMDS[*]} $K8S_VERSION (cold: 10-20 min on 2 cores)"
pkgs=(); for c in "${CMDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
mkdir -p "$DEST.tmp"
(cd "$work/kube" && go build -trimpath -ldflags "$(kube_ldflags "$K8S_VERSION")" -o "$DEST.tmp/" "${pkgs[@]}")
log "took $((SECONDS - start))s"
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$DEST"
