#!/usr/bin/env bash
# conformance.sh: run the OCI distribution-spec conformance suite against a
# standalone bin/registryd, for each storage (file bucket, mem://) and each
# spec version (1.1, dev). Prints pass/fail counts; exits non-zero on any
# failure.
#
# The suite comes from the Go module proxy. Only a pseudo-version of
# github.com/opencontainers/distribution-spec/conformance is served there
# (tagged versions are not); it is the rewritten, main-branch suite, a plain
# program with OCI_VERSION=dev support, so it is `go install`ed, not
# `go test -c`ed. It is cached outside the repository, keyed by version.
#
# Storage "kube" runs registryd in kubernetes mode: hack/dev brings up a real
# kube-apiserver + etcd, the operator and the sample Registry (file bucket),
# and registryd keeps tags in Repository status. After the suite, every
# Repository's status must hold exactly the tags of the bucket's journal.
#
# Storages "htpasswd" and "htpasswd-bearer" run registryd on a file bucket
# in htpasswd auth mode (Basic challenge, or the Docker token flow through
# /token), and the suite logs in with OCI_USERNAME/OCI_PASSWORD.
#
# Storages "s3", "azure" and "gcs" run registryd on versitygw, Azurite and
# fake-gcs-server ("minio", not a default, on MinIO), which
# hack/storage-servers.sh installs (cached) and starts on 127.0.0.1 once for
# the whole run; each run gets its own --storage-prefix in the shared bucket.
#
# Storage "kube-auth" is "kube" with the kubernetes-auth sample: auth mode
# kubernetes, and the suite logs in with a ServiceAccount token from
# `kubectl create token --audience stevedore.dev/registry/default/team` (the
# Registry's own audience) that RBAC allows pull, push, delete and list.
#
# Storage "mirror" is "file" with a pull-through mirror configured
# (docs/mirror.md; its upstream never answers): the registry's own
# repositories must behave exactly as without one.
#
# Env: CONFORMANCE_VERSION, CONFORMANCE_STORAGES ("file mem kube kube-auth htpasswd htpasswd-bearer mirror s3 azure gcs"),
#      CONFORMANCE_SPECS ("1.1 dev"), REGISTRYD (binary), STEVEDORE_CACHE;
#      CONFORMANCE_ROWS ("file/1.1 s3/dev …"): these rows instead of storages × specs.
set -euo pipefail
cd "$(dirname "$0")/.."

version="${CONFORMANCE_VERSION:-v0.0.0-20260831232431-97274622c111}"
cache="${STEVEDORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/stevedore}"
suite="$cache/tools/oci-conformance-$version"
registryd="${REGISTRYD:-bin/registryd}"
storages="${CONFORMANCE_STORAGES:-file mem kube kube-auth htpasswd htpasswd-bearer mirror s3 azure gcs}"
specs="${CONFORMANCE_SPECS:-1.1 dev}"
if [[ -n "${CONFORMANCE_ROWS:-}" ]]; then # the storages the rows use, for the setup below
  storages="$(tr ' ' '\n' <<<"$CONFORMANCE_ROWS" | sed 's#/.*##' | sort -u | tr '\n' ' ')"
fi

if [[ ! -x "$suite" ]]; then
  hack/go-install-tool.sh "$suite" github.com/opencontainers/distribution-spec/conformance "$version"
fi
if [[ ! -x "$registryd" ]]; then
  CGO_ENABLED=0 go build -o "$registryd" ./registryd
fi

work="$(mktemp -d)"
pid=""
servers=""
cleanup() {
  if [[ -n "$pid" ]]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  if [[ -n "$servers" ]]; then hack/storage-servers.sh stop "$servers"; fi
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

start_registryd() { # port storage-url log [flags…]; sets pid; $regenv: KEY=VALUE for registryd
  if [[ "$2" == kube || "$2" == kube-auth ]]; then
    # Tags in Repository status: the dev harness, as `make dev` runs it.
    local samples=config/samples/stevedore_v1alpha1_registry.yaml
    [[ "$2" == kube-auth ]] && samples=config/samples/stevedore_v1alpha1_registry_kubernetes_auth.yaml
    "$devbin" --addr "127.0.0.1:$1" --debug-addr "127.0.0.1:$(free_port)" --dir "$(dirname "$3")/dev" \
      --registryd "$registryd" --samples "$samples" >"$3" 2>&1 &
  else
    env STEVEDORE_HTTP_SECRET=conformance "${regenv[@]}" "$registryd" --addr "127.0.0.1:$1" --storage "$2" --shutdown-delay 0s "${@:4}" >"$3" 2>&1 &
  fi
  pid=$!
  # A kube row brings up an API server, the operator and registryd first:
  # beside two other rows and the real node's image builds that took over
  # a minute once (ci20), so it gets five.
  local tries=600
  [[ "$2" == kube* ]] && tries=3000
  for _ in $(seq "$tries"); do
    code=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$1/v2/" 2>/dev/null || true)
    if [[ "$code" == 200 || "$code" == 401 ]]; then return; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "registryd did not start; log:" >&2; cat "$3" >&2
  # The dev harness's own registryd logs beside it.
  if [[ -f "$(dirname "$3")/dev/registryd.log" ]]; then echo "dev registryd log (tail):" >&2; tail -40 "$(dirname "$3")/dev/registryd.log" >&2; fi
  exit 1
}

devbin=""
if [[ " $storages " == *" kube"* ]]; then
  KUBEBUILDER_ASSETS="${KUBEBUILDER_ASSETS:-$(hack/envtest-assets.sh)}"
  export KUBEBUILDER_ASSETS
  devbin="$work/dev"
  go build -o "$devbin" ./hack/dev
fi

# check_status_matches_journal DIR: every Repository's status tags are the
# bucket journal's tags, digest for digest.
check_status_matches_journal() {
  "$KUBEBUILDER_ASSETS/kubectl" --kubeconfig "$1/dev/kubeconfig" get repositories -A -o json >"$1/repositories.json"
  python3 - "$1/repositories.json" "$1/dev/bucket" <<'PY'
import json, os, sys
repos = json.load(open(sys.argv[1]))["items"]
status = {(r["spec"]["name"], t["name"]): t["digest"] for r in repos for t in r.get("status", {}).get("tags", [])}
journal = {}
root = os.path.join(sys.argv[2], "repos")
for d, _, files in os.walk(root):
    if os.path.basename(d) != "_tags":
        continue
    repo = os.path.relpath(os.path.dirname(d), root)
    for f in files:
        if f.endswith(".attrs"):
            continue
        journal[(repo, f)] = json.load(open(os.path.join(d, f)))["digest"]
if status != journal:
    print("status and journal differ:", sorted(set(status.items()) ^ set(journal.items())))
    sys.exit(1)
print(f"kube: {len(repos)} Repository objects; status holds the journal's {len(status)} tags exactly")
PY
}

# One user for the htpasswd runs; the password never leaves this run.
oci_user=conformance
oci_pass="$(head -c 18 /dev/urandom | base64 | tr -d '/+=')"
if [[ " $storages " == *" htpasswd"* ]]; then
  go run ./hack/htpasswd "$oci_user" <<<"$oci_pass" >"$work/htpasswd"
fi

server_kinds=()
for storage in $storages; do
  case "$storage" in s3 | azure | gcs | minio) server_kinds+=("$storage") ;; esac
done
if [[ ${#server_kinds[@]} -gt 0 ]]; then
  servers="$work/servers"
  hack/storage-servers.sh start "$servers" "${server_kinds[@]}"
  # shellcheck disable=SC1091
  source "$servers/env"
fi

# run_one STORAGE SPEC: one registryd and one run of the suite; writes its
# summary line to DIR/result and its diagnostics to DIR/diagnostics. Runs in
# a subshell of its own, CONFORMANCE_JOBS at a time: each run waits mostly
# on the network, so running several side by side cuts the phase's time.
run_one() {
    local storage="$1" spec="$2" pid="" t0=$SECONDS
    trap '[[ -n "$pid" ]] && kill "$pid" 2>/dev/null' EXIT
    dir="$work/$storage-$spec"; mkdir -p "$dir"
    flags=(); creds=(); regenv=()
    case "$storage" in
      file) url="file://$dir/bucket" ;;
      mirror)
        url="file://$dir/bucket"
        flags=(--mirror '{"upstreams":[{"host":"docker.io","endpoint":"http://127.0.0.1:9"},{"host":"ghcr.io","endpoint":"http://127.0.0.1:9"}]}') ;;
      mem) url="mem://" ;;
      kube) url="kube" ;;
      kube-auth) url="kube-auth" ;; # credentials: a token, once the API server is up
      htpasswd|htpasswd-bearer)
        url="file://$dir/bucket"
        challenge=basic; [[ "$storage" == htpasswd-bearer ]] && challenge=bearer
        flags=(--auth htpasswd --htpasswd-file "$work/htpasswd" --auth-challenge "$challenge")
        creds=(OCI_USERNAME="$oci_user" OCI_PASSWORD="$oci_pass") ;;
      s3 | azure | gcs | minio)
        u="STORAGE_URL_${storage^^}" e="STORAGE_ENV_${storage^^}"
        url="${!u}"
        read -r -a regenv <<<"${!e}" # the backend's credentials: no spaces in them
        flags=(--storage-prefix "conformance-$spec/") ;;
      *) echo "unknown storage $storage" >&2; exit 2 ;;
    esac
    port="$(free_port)"
    start_registryd "$port" "$url" "$dir/registryd.log" "${flags[@]}"
    if [[ "$storage" == kube-auth ]]; then
      # Auth is on: no credentials, no entry.
      anon=$(curl -sS -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/v2/conformance/repo1/tags/list")
      if [[ "$anon" != 401 ]]; then echo "kube-auth: anonymous request answered $anon, want 401" >&2; exit 1; fi
      # A token for the sample Registry's own audience (registryd's default:
      # stevedore.dev/registry/NAMESPACE/NAME), not the API server's.
      creds=(OCI_USERNAME=ci OCI_PASSWORD="$("$KUBEBUILDER_ASSETS/kubectl" --kubeconfig "$dir/dev/kubeconfig" -n default create token ci --audience stevedore.dev/registry/default/team)")
    fi
    rc=0
    (cd "$dir" && env "${creds[@]}" OCI_REGISTRY="127.0.0.1:$port" OCI_TLS=disabled OCI_VERSION="$spec" \
      OCI_REPO1=conformance/repo1 OCI_REPO2=conformance/repo2 \
      OCI_API_PULL=true OCI_API_PUSH=true OCI_API_TAGS_LIST=true OCI_API_REFERRER=true \
      OCI_API_TAGS_DELETE=true OCI_API_MANIFESTS_DELETE=true OCI_API_BLOBS_DELETE=true \
      OCI_RESULTS_DIR="$dir/results" OCI_LOG=warn \
      "$suite" >"$dir/report.txt" 2>"$dir/stderr.txt") || rc=$?
    if [[ "$storage" == kube* ]] && ! check_status_matches_journal "$dir"; then rc=1; fi
    kill -INT "$pid"; wait "$pid" 2>/dev/null || true; pid=""
    pass=$(grep -cE '^ +OCI Conformance Test/.*: Pass$' "$dir/report.txt" || true)
    fail=$(grep -cE '^ +OCI Conformance Test/.*: FAIL$' "$dir/report.txt" || true)
    skip=$(grep -cE '^ +OCI Conformance Test/.*: (Skip|Disabled)$' "$dir/report.txt" || true)
    echo "conformance storage=$storage OCI_VERSION=$spec: pass=$pass fail=$fail skip=$skip exit=$rc ($((SECONDS - t0))s)" >"$dir/result"
    if [[ "$rc" != 0 || "$fail" != 0 || "$pass" == 0 ]]; then
      {
        grep -E 'FAIL' "$dir/report.txt" | head -40 || true
        grep -E 'failed test' "$dir/stderr.txt" | head -20 || true
        echo "registryd log (tail):"; tail -20 "$dir/registryd.log" || true
      } >"$dir/diagnostics"
      return 1
    fi
}

jobs_max="${CONFORMANCE_JOBS:-3}"
# The rows: every storage × every spec, or CONFORMANCE_ROWS when given.
rows=()
if [[ -n "${CONFORMANCE_ROWS:-}" ]]; then
  read -r -a rows <<<"$CONFORMANCE_ROWS"
else
  for storage in $storages; do
    for spec in $specs; do rows+=("$storage/$spec"); done
  done
fi
runs=()
for row in "${rows[@]}"; do
  storage="${row%/*}" spec="${row#*/}"
  while (($(jobs -rp | wc -l) >= jobs_max)); do wait -n || true; done
  run_one "$storage" "$spec" &
  runs+=("$storage-$spec")
done
wait || true
failed=0
summary=()
for r in "${runs[@]}"; do
  dir="$work/$r"
  line="$(cat "$dir/result" 2>/dev/null || echo "conformance $r: did not finish")"
  summary+=("$line")
  echo "$line"
  if [[ -f "$dir/diagnostics" || ! -f "$dir/result" ]]; then
    failed=1
    cat "$dir/diagnostics" 2>/dev/null || true
  fi
done
printf '%s\n' "== conformance summary" "${summary[@]}"
exit "$failed"
