#!/usr/bin/env bash
# bench-storage.sh: registryd's blob push and pull throughput (MB/s) on each
# object store — versitygw (S3), Azurite, fake-gcs-server — next to the file
# backend, from BenchmarkStorage in registryd/e2e. The servers are installed
# (cached) by hack/storage-servers.sh and started by the benchmark itself.
# The emulators are not the clouds: the figures compare registryd's paths
# (streamed vs redirected pulls, verified pushes) on one machine, nothing
# more.
#
# Env: BENCH_STORAGE_MB (blob size, default 32), BENCH_STORAGE_COUNT
#      (iterations per figure, default 5), REGISTRYD (binary).
set -euo pipefail
cd "$(dirname "$0")/.."
STEVEDORE_STORAGE_SERVERS="$(hack/storage-servers.sh install)"
export STEVEDORE_STORAGE_SERVERS
registryd="${REGISTRYD:-bin/registryd}"
if [[ ! -x "$registryd" ]]; then
  CGO_ENABLED=0 go build -trimpath -o "$registryd" ./registryd
fi
out="$(mktemp)"
trap 'rm -f "$out"' EXIT
REGISTRYD="$registryd" go test -run '^$' -bench '^BenchmarkStorage$' -benchtime "${BENCH_STORAGE_COUNT:-5}x" \
  ./registryd/e2e/ | tee "$out" >&2
echo "== storage backends: blob of ${BENCH_STORAGE_MB:-32} MiB, MB/s (higher is better)"
awk '
  /^BenchmarkStorage\// {
    split($1, p, "/"); kind = p[2]; op = p[3]; sub(/-[0-9]+$/, "", op)
    for (i = 1; i <= NF; i++) if ($(i+1) == "MB/s") mbs[kind, op] = $i
    if (!(kind in seen)) { seen[kind] = 1; kinds[++n] = kind }
  }
  END {
    printf "%-8s %10s %10s %15s\n", "backend", "push", "pull", "pull-redirect"
    for (i = 1; i <= n; i++) {
      k = kinds[i]
      r = ((k, "pull-redirect") in mbs) ? mbs[k, "pull-redirect"] : "-"
      printf "%-8s %10s %10s %15s\n", k, mbs[k, "push"], mbs[k, "pull"], r
    }
  }' "$out"
