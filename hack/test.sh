#!/usr/bin/env bash
# make test's recipe: every test, each phase timed (wall and CPU seconds).
#
# The phases run one after another, but for the real node's suite, which
# waits mostly on its pods: it runs in the background (a lane) beside
# fuzzing, the conformance rows and the adversarial suite, never beside the
# tests that assert timing (slowloris ratio, drain, login storm in
# registryd/e2e). Measured: running
# it and the conformance rows beside go vet and the envtest phases instead
# slowed the controllers' package from 114 s to 269 s and saved nothing.
# A lane writes a log; it is printed (filtered) when the lane is waited for,
# and a failed lane prints it whole and fails the run.
#
# Env (from the Makefile): CONTROLLER_GEN, HELM, LOCALBIN,
# VERSION, CACHE, TEST_CONFORMANCE_ROWS.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${CACHE:?}" "${LOCALBIN:?}" "${VERSION:?}" "${TEST_CONFORMANCE_ROWS:?}"

# CPU seconds of this shell's waited-for children (background lanes count
# once they are waited for).
cpu() { local st; read -r -a st </proc/$$/stat; echo $(((st[15] + st[16]) / $(getconf CLK_TCK))); }
t0=$SECONDS c0=$(cpu) start=$SECONDS
phase() { local c; c=$(cpu); echo "== $1: $((SECONDS - t0))s ($((c - c0))s cpu)"; t0=$SECONDS c0=$c; }

logs="$(mktemp -d /tmp/stevedore-test.XXXXXX)"
lanes=()
# lane NAME CMD…: runs CMD in the background into $logs/NAME.log and
# appends its wall time; the exit status is kept for wait_lane.
lane() {
  local name=$1; shift
  ( s=$SECONDS; rc=0; "$@" >"$logs/$name.log" 2>&1 || rc=$?
    echo "== $name: exit $rc after $((SECONDS - s))s (background lane)" >>"$logs/$name.log"; exit "$rc" ) &
  lanes+=("$name=$!")
}
# wait_lane NAME FILTER: waits for it; prints its log through FILTER, or
# whole on failure.
wait_lane() {
  local name=$1 filter=$2 l pid rc=0
  for l in "${lanes[@]}"; do [[ ${l%%=*} == "$name" ]] && pid=${l#*=}; done
  wait "$pid" || rc=$?
  if [[ $rc != 0 ]]; then cat "$logs/$name.log"; echo "== $name failed (exit $rc)"; exit 1; fi
  grep -vE "$filter" "$logs/$name.log" || true
}
# On a failure in the foreground, the lanes still finish (the node lane
# tears its node down itself), so nothing is left running or half-up.
trap 'wait; rm -rf "$logs"' EXIT

KUBEBUILDER_ASSETS="$(hack/envtest-assets.sh)"
export KUBEBUILDER_ASSETS CONTROLLER_GEN
phase "envtest assets"
# The node's components build beside the installs below when they are not
# cached; the node lane waits for them.
mkdir -p "$CACHE"
node_log="$CACHE/node-assets.log"
hack/node-assets.sh >"$node_log" 2>&1 &
node_assets=$!
STEVEDORE_CLIENTS="$(hack/install-clients.sh)"
export STEVEDORE_CLIENTS
phase "clients (crane, oras, regctl, skopeo, distribution)"
STEVEDORE_STORAGE_SERVERS="$(hack/storage-servers.sh install)"
export STEVEDORE_STORAGE_SERVERS
phase "storage servers (versitygw, Azurite, fake-gcs-server)"
make --no-print-directory helm
export HELM="${HELM:?}"
phase "helm"
arch="$(go env GOARCH)"
make --no-print-directory build-platforms PLATFORMS="linux/$arch" >/dev/null
export STEVEDORE_BIN_DIR="$LOCALBIN/linux_$arch" STEVEDORE_BIN_VERSION="$VERSION"
export CREDENTIAL_PROVIDER="$STEVEDORE_BIN_DIR/stevedore-credential-provider"
wait "$node_assets" || { cat "$node_log"; exit 1; }
phase "build the binaries once (and the node's components, in the background since the envtest assets)"

# Test binaries without DWARF (-ldflags=-w): it serves debuggers only (stack
# traces and race reports read the runtime's own tables), and leaving it out
# cuts each -race link by a third (11.1 s -> 7.6 s for registryd/tags/kube).
# GOFLAGS reaches the binaries the tests build themselves too; the image's
# binaries (make image) set their own -ldflags, which win.
# -trimpath keeps the clone's directory out of every compile's cache key, so
# a fresh clone (CI's) reuses the packages an earlier clone compiled: test
# binaries, -race ones and vet of the whole module in a new directory took
# 205 s (285 s CPU) without it, 100 s (140 s CPU) with it.
# testenv.RepoRoot finds the repository without the source paths it drops.
export GOFLAGS="${GOFLAGS:+$GOFLAGS }-trimpath -ldflags=-w"

# long_first PACKAGES FIRST…: PACKAGES (one a line) with FIRST (paths in
# the module; the measured long poles) moved to the front. go test builds
# and starts packages in the order given, so a long pole that sorts last
# runs alone at the end: -race registryd took 169 s in go list's order,
# 153 s with tags/kube first.
long_first() {
  local all=$1 first; shift
  first="$(printf '%s\n' "${@/#/$(go list -m)/}")"
  echo "$first"
  grep -vxF "$first" <<<"$all"
}

go vet ./...
phase "go vet"
# -parallel 4: the controllers' parallel tests wait on the API server and
# kubectl, not the CPU (controllers 98 s -> 79 s).
# shellcheck disable=SC2046
go test -count=1 -timeout 30m -parallel 4 $(long_first "$(go list ./... | grep -v '/registryd')" \
  controllers internal/generated hack/dev internal/bucket)
phase "go test (operator, envtest, generated code)"
# shellcheck disable=SC2046
go test -race -count=1 -timeout 30m $(long_first "$(go list ./registryd/... | grep -vE '/registryd/(hostile|e2e)$')" \
  registryd/tags/kube registryd/server registryd/auth/kubetest registryd/gc)
phase "go test -race registryd (unit, envtest)"
# registryd/e2e in two runs sharing one -race registryd: first its tests
# that assert timing (the ones that do not call t.Parallel: drain, slowloris,
# login storm, storage outage), alone;
# then the rest, which wait mostly on their processes and used one core of
# two (measured: 110 s wall, 103 % CPU), beside the start of the real node's
# suite, which builds its images and brings its node up then.
e2e_timing='^(TestDrainOnSIGTERM|TestLoginStorm|TestSlowloris|TestStorageOutage)$'
race_registryd="$logs/registryd-race"
go build -race -o "$race_registryd" ./registryd
REGISTRYD="$race_registryd" go test -count=1 -timeout 30m -run "$e2e_timing" ./registryd/e2e/
phase "registryd e2e, the tests that assert timing (registryd processes built with -race)"
lane node hack/node-e2e.sh
REGISTRYD="$race_registryd" go test -count=1 -timeout 30m -parallel 8 -skip "$e2e_timing" ./registryd/e2e/
phase "registryd e2e with real clients, the rest (beside the real node's suite starting)"
# The real node's suite waits mostly on its pods. It started beside the
# e2e tests that assert no timing, and goes on beside fuzzing and the
# conformance rows (which assert none either) while it builds its
# images and brings its node up, the part that needs the CPU, and ends
# beside the adversarial suite (whose one timing check, slowloris, gives
# honest requests of well under a second a 2 s deadline). Measured, warm:
# started beside the adversarial suite instead, that suite took 268 s
# rather than 141 s; started after it, the run waited 34 s for the node.
# Each target starts from its seeds (f.Add and testdata/fuzz), not from the
# inputs earlier runs added to the build cache: go test -fuzz first runs
# every cached input, and that corpus grows with every run on a machine that
# keeps its cache (CI's): FuzzHandler's 279 cached inputs took 28 s before
# its 10,000 executions began. A failing input is still kept, in testdata.
rm -rf "$(go env GOCACHE)/fuzz/$(go list -m)"
make --no-print-directory -j2 --output-sync=target fuzz
phase "fuzz (two targets at a time; the real node's suite started beside it)"
CONFORMANCE_ROWS="$TEST_CONFORMANCE_ROWS" REGISTRYD="$STEVEDORE_BIN_DIR/registryd" hack/conformance.sh
phase "OCI conformance, $(wc -w <<<"$TEST_CONFORMANCE_ROWS") rows (beside the real node's suite)"
go test -race -count=1 -timeout 30m -v ./registryd/hostile/ | grep -E '^(--- |    --- |ok|FAIL|PASS)|(hostile|manytags)_test.go'
phase "adversarial suite (-race, 3 replicas, file and versitygw; beside the end of the real node's suite)"
wait_lane node '^        '
phase "end-to-end on a real node (test/node; the wait for its end)"
echo "== make test passed in $((SECONDS - start))s ($(cpu)s cpu)"
