#!/usr/bin/env bash
# storage-servers.sh: the object stores registryd is tested against, on
# 127.0.0.1 — S3 (versitygw), Azure Blob (Azurite) and GCS (fake-gcs-server).
#
#   hack/storage-servers.sh install      install (cached) and print the directory holding
#                                        versitygw, azurite-blob and fake-gcs-server
#   hack/storage-servers.sh start DIR    install, start all three with data under DIR, create
#                                        the bucket "stevedore" on each, write DIR/env (sourceable:
#                                        STORAGE_URL_S3/AZURE/GCS and the credentials registryd needs)
#                                        and DIR/pids, and return once they answer
#   hack/storage-servers.sh stop DIR     stop what `start DIR` started
#
# Everything is cached outside the repository, keyed by version, under
# ${STEVEDORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stevedore}/tools, so a warm
# run installs nothing. Cold, it needs only the Go module proxy and the npm
# registry. The Go servers are built one at a time (two cores shared with the
# rest of the test run) with -trimpath, which hack/go-install-tool.sh passes.
#
# The Go tests start their own servers (internal/testutil/storageservers), on
# the binaries in the directory `install` prints (STEVEDORE_STORAGE_SERVERS).
set -euo pipefail
cd "$(dirname "$0")/.."

VERSITYGW_VERSION="${VERSITYGW_VERSION:-v1.8.0}"
FAKE_GCS_VERSION="${FAKE_GCS_VERSION:-v1.56.1}"
AZURITE_VERSION="${AZURITE_VERSION:-3.37.0}"

cache="${STEVEDORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stevedore}"
tools="$cache/tools"
bin="$cache/storage-servers"

install() {
  mkdir -p "$bin"
  hack/go-install-tool.sh "$tools/versitygw-$VERSITYGW_VERSION" github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION"
  ln -sf "$tools/versitygw-$VERSITYGW_VERSION" "$bin/versitygw"
  hack/go-install-tool.sh "$tools/fake-gcs-server-$FAKE_GCS_VERSION" github.com/fsouza/fake-gcs-server "$FAKE_GCS_VERSION"
  ln -sf "$tools/fake-gcs-server-$FAKE_GCS_VERSION" "$bin/fake-gcs-server"
  local az="$tools/azurite-$AZURITE_VERSION"
  if [[ ! -x "$az/node_modules/.bin/azurite-blob" ]]; then
    command -v npm >/dev/null || { echo "storage-servers: npm is needed for Azurite (apt-get install npm)" >&2; exit 1; }
    echo "installing azurite@$AZURITE_VERSION (npm)" >&2
    local tmp="$az.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    (cd "$tmp" && npm install --no-audit --no-fund --omit=dev --loglevel=error "azurite@$AZURITE_VERSION" >&2)
    rm -rf "$az" && mv "$tmp" "$az"
  fi
  ln -sfn "$az/node_modules/.bin/azurite-blob" "$bin/azurite-blob"
}

case "${1:-}" in
  install)
    install
    echo "$bin"
    ;;
  start)
    dir="${2:?usage: storage-servers.sh start DIR}"
    install
    mkdir -p "$dir"
    # A small Go program starts the servers and creates the buckets with
    # the same code the Go tests use; it stays in the foreground, so it is
    # run in the background here and stopped by `stop`.
    go build -o "$dir/storage-servers" ./hack/storage-servers
    rm -f "$dir/env"
    STEVEDORE_STORAGE_SERVERS="$bin" "$dir/storage-servers" -dir "$dir" >"$dir/storage-servers.log" 2>&1 &
    echo $! >"$dir/pids"
    for _ in $(seq 600); do
      [[ -s "$dir/env" ]] && exit 0
      kill -0 "$(cat "$dir/pids")" 2>/dev/null || break
      sleep 0.1
    done
    echo "storage servers did not start; log:" >&2; cat "$dir/storage-servers.log" >&2
    exit 1
    ;;
  stop)
    dir="${2:?usage: storage-servers.sh stop DIR}"
    if [[ -s "$dir/pids" ]]; then
      pid="$(cat "$dir/pids")"
      kill -INT "$pid" 2>/dev/null || true
      for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      rm -f "$dir/pids"
    fi
    ;;
  *)
    echo "usage: $0 install | start DIR | stop DIR" >&2
    exit 2
    ;;
esac
