# Shared by hack/envtest-assets.sh and hack/node-assets.sh: a wrapper module
# that builds k8s.io/kubernetes commands from the Go module proxy.
#
# k8s.io/kubernetes replaces every staging module with ./staging/src/…, which
# its module zip lacks; the wrapper points each one it also requires at its
# published version. Both scripts use the same wrapper, so the second one's
# build reuses the first one's compiled packages from the Go build cache.

# kube_ldflags VERSION: the version stamps `kubectl version` and /version show.
kube_ldflags() {
  local version="$1" minor ldflags="" pkg
  minor="${version#v1.}"; minor="${minor%%.*}"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$ldflags"
}

# Every command either script builds: tools.go imports all of them, so both
# wrappers resolve the same module graph and share every compiled package.
KUBE_CMDS=(kube-apiserver kubectl kubelet kube-proxy kube-scheduler kube-controller-manager)

# kube_wrapper DIR VERSION: writes the wrapper module into DIR.
kube_wrapper() {
  local dir="$1" version="$2"
  local staging="v0.${version#v1.}" gomod mods required m
  mkdir -p "$dir"
  cat >"$dir/go.mod" <<MOD
module stevedore.dev/kube-wrapper

go 1.26

require k8s.io/kubernetes $version
MOD
  gomod="$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')"
  mods="$(awk '/=> .\/staging\/src\// {print $1}' "$gomod" | sort -u)"
  required="$(awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r{print $1} /^require [^(]/{print $2}' "$gomod" | sort -u)"
  for m in $mods; do
    if grep -qx "$m" <<<"$required"; then
      echo "replace $m => $m $staging" >>"$dir/go.mod"
    fi
  done
  {
    echo '//go:build tools'
    echo
    echo 'package tools'
    echo
    echo 'import ('
    for m in "${KUBE_CMDS[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$m\""; done
    echo ')'
  } >"$dir/tools.go"
  (cd "$dir" && go mod tidy >/dev/null)
}
