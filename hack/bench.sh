#!/usr/bin/env bash
# make bench: registryd side by side with distribution (hack/bench/, a Go
# harness with its own go.mod so its client libraries stay out of the
# product's), then the kubernetes tag-store benchmarks against a real
# kube-apiserver. Installs what it needs (distribution and crane with go
# install, wrk and ab from Debian), all cached, and writes docs/benchmarks.md.
# Not part of make test. Round counts and sizes: see BENCH_* in
# docs/benchmarks.md. BENCH_ONLY=gc (make bench-gc) runs the garbage-
# collection workload alone and prints it, leaving docs/benchmarks.md;
# BENCH_ONLY=kube (make bench-kube) the same for kubernetes mode over HTTP,
# BENCH_ONLY=s3 (make bench-s3) for the S3 workload (redirects off and on),
# BENCH_ONLY=bytes (make bench-bytes) for workload 1 and the machine limits.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS

DISTRIBUTION_VERSION="${DISTRIBUTION_VERSION:-v3.1.2}"
CRANE_VERSION="${CRANE_VERSION:-v0.22.1}"
cache="${STEVEDORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stevedore}"
distribution="$cache/tools/registry-$DISTRIBUTION_VERSION"
crane="$cache/tools/crane-$CRANE_VERSION"
hack/go-install-tool.sh "$distribution" github.com/distribution/distribution/v3/cmd/registry "$DISTRIBUTION_VERSION"
hack/go-install-tool.sh "$crane" github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
# wrk loads manifest GETs; ab (apache2-utils) the HEADs, which wrk cannot.
apt_install() { # command package
  command -v "$1" >/dev/null 2>&1 && return
  echo "installing $2 (apt)" >&2
  if [[ "$(id -u)" != 0 ]]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q "$2" >&2 || { $SUDO apt-get update -q >&2 && $SUDO apt-get install -y -q "$2" >&2; }
}
apt_install wrk wrk
apt_install ab apache2-utils
only="${BENCH_ONLY:-}"
if [[ -z "$only" || "$only" == kube ]]; then
  KUBEBUILDER_ASSETS="${KUBEBUILDER_ASSETS:-$(hack/envtest-assets.sh)}"
  export KUBEBUILDER_ASSETS
fi

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd hack/bench && CGO_ENABLED=0 go build -o "$tmp/bench" .)
# The scratch directory holds both servers' storage: keep it on the disk
# the servers would use (the repository's), not a tmpfs.
mkdir -p .bench
work="$(mktemp -d "$PWD/.bench/run-XXXXXX")"
trap 'hack/storage-servers.sh stop "$work/s3"; rm -rf "$tmp" "$work"' EXIT
# Workload 7 (garbage collection) collects a versitygw bucket.
hack/storage-servers.sh start "$work/s3" s3
# shellcheck disable=SC1091
source "$work/s3/env"
"$tmp/bench" -registryd bin/registryd -distribution "$distribution" -crane "$crane" -wrk "$(command -v wrk)" -ab "$(command -v ab)" \
  -work-dir "$work" -kube-benchtime "${BENCH_TAGS:-600x}" -out docs/benchmarks.md -reproduce "make bench" \
  -gc-s3-url "$STORAGE_URL_S3" -gc-s3-env "$STORAGE_ENV_S3"
if [[ -n "$only" ]]; then
  echo "== make bench (BENCH_ONLY=$only) finished in $(( SECONDS - start ))s"
  exit 0
fi
# Pull-through mirror (issue 19): a BENCH_MIRROR_MIB (1 GiB) blob pulled
# from distribution directly, through a cold mirror and from its warm cache
# (median of BENCH_MIRROR_ROUNDS rounds); the goal is cold >= 80 % of direct.
echo "== mirror throughput" >&2
clients="$(hack/install-clients.sh)"
(cd registryd/e2e && REGISTRYD="$OLDPWD/bin/registryd" STEVEDORE_CLIENTS="$clients" \
  MIRROR_BENCH_MIB="${BENCH_MIRROR_MIB:-1024}" MIRROR_BENCH_ROUNDS="${BENCH_MIRROR_ROUNDS:-3}" \
  go test -count=1 -run '^TestMirrorThroughput$' -v . | grep -E 'median|FAIL|^ok')
# Storage backends (issue 6): its own script, so this one can change freely.
hack/bench-storage.sh
echo "== make bench finished in $(( SECONDS - start ))s"
