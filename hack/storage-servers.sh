#!/usr/bin/env bash
# storage-servers.sh: the object stores registryd is tested against, on
# 127.0.0.1 — S3 (versitygw), Azure Blob (Azurite) and GCS (fake-gcs-server).
#
#   hack/storage-servers.sh install [KIND…]    install (cached) and print the directory holding
#                                              versitygw, azurite-blob and fake-gcs-server
#   hack/storage-servers.sh start DIR [KIND…]  install, start them with data under DIR, create
#                                              the bucket "stevedore" on each, write DIR/env (sourceable:
#                                              STORAGE_URL_S3/AZURE/GCS and STORAGE_ENV_…, the
#                                              credentials registryd needs) and DIR/pids, and
#                                              return once they answer
#   hack/storage-servers.sh stop DIR           stop what `start DIR` started
#
# KIND is s3 (versitygw), azure (Azurite), gcs (fake-gcs-server) — the
# default — or minio, a second S3 server that is slow to build and only
# `make test-minio` uses.
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
# MinIO tags no Go module versions; this is what @latest resolved to.
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"

cache="${STEVEDORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stevedore}"
tools="$cache/tools"
bin="$cache/storage-servers"

install_go() { # name package version
  hack/go-install-tool.sh "$tools/$1-$3" "$2" "$3"
  ln -sf "$tools/$1-$3" "$bin/$1"
}

install_azurite() {
  local az="$tools/azurite-$AZURITE_VERSION"
  if [[ ! -x "$az/node_modules/.bin/azurite-blob" ]]; then
    if ! command -v npm >/dev/null 2>&1; then
      # As install-clients.sh does for skopeo: Debian's Node.js is new enough.
      echo "installing nodejs and npm (apt) for Azurite" >&2
      if [[ "$(id -u)" != 0 ]]; then SUDO=sudo; else SUDO=; fi
      export DEBIAN_FRONTEND=noninteractive
      $SUDO apt-get install -y -q nodejs npm >&2 || { $SUDO apt-get update -q >&2 && $SUDO apt-get install -y -q nodejs npm >&2; }
    fi
    echo "installing azurite@$AZURITE_VERSION (npm)" >&2
    local tmp="$az.tmp.$$"
    rm -rf "$tmp" && mkdir -p "$tmp"
    (cd "$tmp" && npm install --no-audit --no-fund --omit=dev --loglevel=error "azurite@$AZURITE_VERSION" >&2)
    rm -rf "$az" && mv "$tmp" "$az"
  fi
  ln -sfn "$az/node_modules/.bin/azurite-blob" "$bin/azurite-blob"
}

install() { # KIND…
  mkdir -p "$bin"
  local kind
  for kind in "$@"; do
    case "$kind" in
      s3) install_go versitygw github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION" ;;
      gcs) install_go fake-gcs-server github.com/fsouza/fake-gcs-server "$FAKE_GCS_VERSION" ;;
      azure) install_azurite ;;
      minio) install_go minio github.com/minio/minio "$MINIO_VERSION" ;;
      *) echo "storage-servers: unknown kind $kind" >&2; exit 2 ;;
    esac
  done
}

default_kinds=(s3 azure gcs)
case "${1:-}" in
  install)
    shift
    kinds=("$@"); [[ ${#kinds[@]} -gt 0 ]] || kinds=("${default_kinds[@]}")
    install "${kinds[@]}"
    echo "$bin"
    ;;
  start)
    dir="${2:?usage: storage-servers.sh start DIR [KIND…]}"
    shift 2
    kinds=("$@"); [[ ${#kinds[@]} -gt 0 ]] || kinds=("${default_kinds[@]}")
    install "${kinds[@]}"
    mkdir -p "$dir"
    # A small Go program starts the servers and creates the buckets with
    # the same code the Go tests use; it stays in the foreground, so it is
    # run in the background here and stopped by `stop`.
    go build -o "$dir/storage-servers" ./hack/storage-servers
    rm -f "$dir/env"
    STEVEDORE_STORAGE_SERVERS="$bin" "$dir/storage-servers" -dir "$dir" -kinds "${kinds[*]}" >"$dir/storage-servers.log" 2>&1 &
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
    echo "usage: $0 install [KIND…] | start DIR [KIND…] | stop DIR" >&2
    exit 2
    ;;
esac
