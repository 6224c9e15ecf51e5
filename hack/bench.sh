#!/usr/bin/env bash
# make bench: benchmarks. Today: the kubernetes tag store against a real
# kube-apiserver (tags pushed per second into Repository status across three
# replicas, tag reads at the tag limit). The side-by-side run with
# distribution (issue 9) is not built yet, and this script says so.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBEBUILDER_ASSETS="${KUBEBUILDER_ASSETS:-$(hack/envtest-assets.sh)}"
export KUBEBUILDER_ASSETS
echo "== machine: $(nproc) cores, $(grep MemTotal /proc/meminfo | awk '{print $2/1024/1024 " GiB"}'), $(go version | cut -d' ' -f3-)"
echo "== kubernetes tag store (real kube-apiserver + etcd)"
go test -count=1 -run '^$' -bench . -benchtime "${BENCH_TAGS:-600x}" ./registryd/tags/kube | grep -E '^(Benchmark|ok|FAIL)'
echo "== side by side with distribution and zot: not yet built (issue 9)"
# Storage backends (issue 6): its own script, so this one can change freely.
hack/bench-storage.sh
