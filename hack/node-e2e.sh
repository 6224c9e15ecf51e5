#!/usr/bin/env bash
# The end-to-end suite on a real node (test/node): builds the image as
# `make image` does (this machine's platform only), brings a node up with it
# (hack/node.sh), runs the suite inside the node's network namespace, and
# tears the node down whatever happens. make test runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${STEVEDORE_CLIENTS:=$(hack/install-clients.sh)}" "${HELM:?HELM: the helm binary (make helm)}"
export STEVEDORE_CLIENTS HELM
arch="$(go env GOARCH)"
DIR="$(mktemp -d /tmp/stevedore-node.XXXXXX)"
trap 'hack/node.sh down "$DIR"' EXIT
start=$SECONDS
make --no-print-directory image PLATFORMS="linux/$arch" >/dev/null
# The next release, for the upgrade under load: another tag and version
# label on the same binaries, so the image digest differs and the chart's
# upgrade rolls every pod, which is what the test watches. Relinking the
# binaries with the version stamped in them took 26 s alone and over a
# minute beside the other phases of make test, and nothing the test checks
# reads it.
make --no-print-directory image-pack PLATFORMS="linux/$arch" VERSION=0.1.1-e2e IMAGE_DIR="$DIR/next/image" >/dev/null
echo "node-e2e: image built in $((SECONDS - start))s" >&2
go test -c -o "$DIR/node.test" ./test/node
# test/node's TestWorkloadIdentity: Registry ident/registry on NodePort 30500.
export NODE_CREDENTIAL_PROVIDER="bin/linux_$arch/stevedore-credential-provider"
export NODE_CREDENTIAL_PROVIDER_MATCH="10.200.0.1:30500" NODE_CREDENTIAL_PROVIDER_AUDIENCE="stevedore.dev/registry/ident/registry"
hack/node.sh up "$DIR" "bin/image/stevedore-linux-$arch.tar" "$DIR/next/image/stevedore-linux-$arch.tar"
# shellcheck disable=SC1091
source "$DIR/env"
STEVEDORE_NODE_DIR="$DIR" hack/node.sh exec "$DIR" "$DIR/node.test" -test.v -test.count=1 -test.timeout=25m "$@"
