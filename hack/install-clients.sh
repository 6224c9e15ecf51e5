#!/usr/bin/env bash
# install-clients.sh: install the real registry clients the e2e tests drive
# (crane, oras, regctl with go install from the module proxy, skopeo from
# Debian), containerd and ctr (Debian, as root) for the mirror tests' pulls,
# and distribution's registry as the mirror tests' upstream (linked
# as `distribution`, so it is never mistaken for another `registry` on PATH),
# and print the directory holding them. Cached outside the repo,
# keyed by version, so a second run does nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

CRANE_VERSION="${CRANE_VERSION:-v0.22.1}"
ORAS_VERSION="${ORAS_VERSION:-v1.3.6}"
REGCTL_VERSION="${REGCTL_VERSION:-v0.11.7}"
DISTRIBUTION_VERSION="${DISTRIBUTION_VERSION:-v3.1.2}"

cache="${STEVEDORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stevedore}"
bin="$cache/clients"
mkdir -p "$bin"

install_go() { # name package version [link name]
  local dest="$cache/tools/$1-$3"
  hack/go-install-tool.sh "$dest" "$2" "$3"
  ln -sf "$dest" "$bin/${4:-$1}"
}

install_go crane github.com/google/go-containerregistry/cmd/crane "$CRANE_VERSION"
install_go oras oras.land/oras/cmd/oras "$ORAS_VERSION"
install_go regctl github.com/regclient/regclient/cmd/regctl "$REGCTL_VERSION"
# The same cached file hack/bench.sh uses.
install_go registry github.com/distribution/distribution/v3/cmd/registry "$DISTRIBUTION_VERSION" distribution

if ! command -v skopeo >/dev/null 2>&1; then
  echo "installing skopeo (apt)" >&2
  if [[ "$(id -u)" != 0 ]]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get install -y -q skopeo >&2 || { $SUDO apt-get update -q >&2 && $SUDO apt-get install -y -q skopeo >&2; }
fi
ln -sf "$(command -v skopeo)" "$bin/skopeo"
# containerd and ctr: the workload client of the mirror tests, which pull
# as a kubelet does (the real node's suite installs the same package). A
# fresh machine has neither; the tests need root to run them anyway.
if ! command -v containerd >/dev/null 2>&1 || ! command -v ctr >/dev/null 2>&1; then
  if [[ "$(id -u)" == 0 ]]; then
    echo "installing containerd (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends containerd >&2 || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends containerd >&2; }
  else
    echo "install-clients: not root, so no containerd: the mirror tests skip their containerd pulls" >&2
  fi
fi
echo "$bin"
