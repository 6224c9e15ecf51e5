#!/usr/bin/env bash
# go-install-tool.sh DEST PACKAGE VERSION: go-installs PACKAGE@VERSION as the file DEST.
# DEST lives in the cache outside the repo, named with its version, so a second
# run (or a fresh clone on the same machine) does not rebuild it.
set -euo pipefail
dest="$1" pkg="$2" version="$3"
[[ -x "$dest" ]] && exit 0
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "installing $pkg@$version" >&2
GOBIN="$tmp" GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS= go install -trimpath -ldflags="-s -w" "$pkg@$version"
mkdir -p "$(dirname "$dest")"
mv "$tmp/$(basename "$pkg")" "$dest"
