#!/usr/bin/env bash
# Builds a real kube-apiserver, etcd and kubectl from the Go module proxy into a
# versioned cache directory outside the repo, and prints that directory.
#
# The usual setup-envtest download is not reachable from our machines, so every
# test and `make dev` gets its API server from here. Idempotent: a warm cache
# returns at once; a lock keeps two runs from building at the same time.
set -euo pipefail

K8S_VERSION="${K8S_VERSION:-v1.37.2}"   # matches k8s.io/* v0.37.x in go.mod
ETCD_VERSION="${ETCD_VERSION:-v3.7.3}"
CACHE_ROOT="${STEVEDORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stevedore}"
DEST="$CACHE_ROOT/envtest/k8s-${K8S_VERSION}-etcd-${ETCD_VERSION}"

log() { echo "envtest-assets: $*" >&2; }

have_all() {
  [[ -x "$DEST/kube-apiserver" && -x "$DEST/etcd" && -x "$DEST/kubectl" ]]
}

if have_all; then
  echo "$DEST"
  exit 0
fi

mkdir -p "$CACHE_ROOT/envtest"
exec 9>"$CACHE_ROOT/envtest/.lock"
flock 9
if have_all; then # another run finished while we waited
  echo "$DEST"
  exit 0
fi

export GOTOOLCHAIN=local GOFLAGS=-mod=mod CGO_ENABLED=0
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$DEST.tmp"

# shellcheck source=hack/lib/kube-wrapper.sh
source "$(dirname "$0")/lib/kube-wrapper.sh"

build_kube() {
  local start=$SECONDS ldflags
  ldflags="$(kube_ldflags "$K8S_VERSION")"
  kube_wrapper "$work/kube" "$K8S_VERSION"
  cd "$work/kube"
  log "building kube-apiserver $K8S_VERSION (cold: 15-25 min on 2 cores)"
  go build -trimpath -ldflags "$ldflags" -o "$DEST.tmp/kube-apiserver" k8s.io/kubernetes/cmd/kube-apiserver
  log "building kubectl $K8S_VERSION"
  go build -trimpath -ldflags "$ldflags" -o "$DEST.tmp/kubectl" k8s.io/kubernetes/cmd/kubectl
  log "kube-apiserver + kubectl took $((SECONDS - start))s"
}

build_etcd() {
  local start=$SECONDS
  mkdir -p "$work/etcd" && cd "$work/etcd"
  cat >go.mod <<MOD
module stevedore.dev/envtest-etcd

go 1.26

require go.etcd.io/etcd/server/v3 $ETCD_VERSION
MOD
  cat >main.go <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
  go mod tidy >/dev/null
  log "building etcd $ETCD_VERSION"
  go build -trimpath -o "$DEST.tmp/etcd" .
  log "etcd took $((SECONDS - start))s"
}

[[ -x "$DEST.tmp/etcd" ]] || build_etcd
[[ -x "$DEST.tmp/kube-apiserver" && -x "$DEST.tmp/kubectl" ]] || build_kube
rm -rf "$DEST"
mv "$DEST.tmp" "$DEST"
echo "$DEST"
