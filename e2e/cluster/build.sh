#!/usr/bin/env bash
# Builds the local cluster's upstream programs from their Go modules (test infrastructure only;
# the product is Rust), each pinned by the go.mod/go.sum beside this script:
#   kubernetes/  kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, kube-proxy
#                (k8s.io/kubernetes, staging modules at the matching v0.x), and the pause
#                container's program from the same release's build/pause/linux/pause.c
#   etcd/        etcd (go.etcd.io/etcd/server/v3)
#   coredns/     CoreDNS with the plugins a test cluster needs (github.com/coredns/coredns)
#   prometheus/  Prometheus with Kubernetes service discovery (Debian's is built without it)
# A component is rebuilt only when its module files, this script or the Go version changed, so
# a second run takes seconds. Cold, on 2 cores: 37 minutes here beside a Rust build (the
# Kubernetes binaries most of it).
#
# Environment: BIN (output folder, default /var/cache/imageclassifier/cluster/bin); GOMODCACHE and
# GOCACHE (default under /var/cache/imageclassifier, outside any clone).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${BIN:-/var/cache/imageclassifier/cluster/bin}
export GOMODCACHE=${GOMODCACHE:-/var/cache/imageclassifier/go-mod}
export GOCACHE=${GOCACHE:-/var/cache/imageclassifier/go-build}
# The Go on this machine, never a downloaded toolchain; static programs (they also run in
# images without a C library).
export GOTOOLCHAIN=local GOFLAGS=-buildvcs=false CGO_ENABLED=0

say() { echo "cluster-build: $*"; }
fail() { echo "cluster-build: $*" >&2; exit 1; }
command -v go >/dev/null || fail "needs Go (https://go.dev/doc/install)"
command -v gcc >/dev/null || fail "needs gcc with a static C library (apt-get install gcc libc6-dev)"
mkdir -p "$out"
# One build at a time (CI starts one early in the background; the e2e's waits for it here).
exec 9>"$out/.lock"
flock 9

# What a component's build depends on: its module files, this script and the Go version.
fingerprint() { # COMPONENT
  { go version; cat "$here/build.sh"; find "$here/$1" -type f | sort | xargs cat; } | sha256sum | cut -d' ' -f1
}

# Runs `build_COMPONENT` unless the programs it made last time are there and up to date.
component() { # COMPONENT PROGRAM...
  local name=$1 stamp
  shift
  stamp=$(fingerprint "$name")
  local program missing=0
  for program in "$@"; do [ -x "$out/$program" ] || missing=1; done
  if [ "$missing" = 0 ] && [ "$(cat "$out/.$name.stamp" 2>/dev/null)" = "$stamp" ]; then
    return 0
  fi
  say "building $* ($name)"
  local started=$SECONDS
  (cd "$here/$name" && "build_$name")
  echo "$stamp" >"$out/.$name.stamp"
  say "$name built in $((SECONDS - started))s"
}

module_version() { # MODULE (in the current module)
  go list -m -f '{{.Version}}' "$1"
}

build_kubernetes() {
  local version minor flags package
  version=$(module_version k8s.io/kubernetes)
  minor=${version#v1.}
  minor=${minor%%.*}
  # What hack/lib/version.sh stamps into a release, so `kubectl version` names the release.
  flags="-s -w"
  for package in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags="$flags -X $package.gitVersion=$version -X $package.gitMajor=1 -X $package.gitMinor=$minor"
    flags="$flags -X $package.gitTreeState=clean"
  done
  go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "all=$flags" -o "$out/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubelet \
    k8s.io/kubernetes/cmd/kube-proxy
  local source
  source=$(go list -m -f '{{.Dir}}' k8s.io/kubernetes)/build/pause/linux/pause.c
  gcc -Os -Wall -Werror -static -DVERSION="$version" -o "$out/pause" "$source"
  strip "$out/pause"
}

build_etcd() {
  go build -trimpath -ldflags "-s -w" -o "$out/etcd" .
}

build_coredns() {
  local version
  version=$(module_version github.com/coredns/coredns)
  go build -trimpath -tags grpcnotrace \
    -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$version" -o "$out/coredns" .
}

build_prometheus() {
  local version
  version=$(module_version github.com/prometheus/prometheus)
  # Module v0.X.Y is Prometheus 2.X.Y.
  go build -trimpath -tags netgo \
    -ldflags "-s -w -X github.com/prometheus/common/version.Version=2.${version#v0.} -X github.com/prometheus/common/version.Revision=$version" \
    -o "$out/prometheus" github.com/prometheus/prometheus/cmd/prometheus
}

component kubernetes kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy pause
component etcd etcd
component coredns coredns
component prometheus prometheus
say "up to date in $out"
