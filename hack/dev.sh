#!/usr/bin/env bash
# make dev: a real API server, the operator, the sample Registry and registryd.
set -euo pipefail
cd "$(dirname "$0")/.."
KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh)"
export KUBEBUILDER_ASSETS
exec go run ./hack/dev "$@"
