#!/usr/bin/env bash
# The OpenAPI schema (api/openapi-spec/swagger.json) of every Kubernetes release in
# e2e/kubernetes-versions, taken from the k8s.io/kubernetes module through the Go module proxy
# (checksums verified by the go command), into K8S_SCHEMAS as <version>.json. Files already
# there are kept, so a second run makes no request. `make schemas` runs it; `make test` too.
#
# Environment: K8S_SCHEMAS (default /var/cache/imageclassifier/k8s-schemas); GOMODCACHE and
# GOPROXY as the go command reads them.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
out=${K8S_SCHEMAS:-/var/cache/imageclassifier/k8s-schemas}
fail() { echo "k8s-schemas: $*" >&2; exit 1; }
command -v go >/dev/null || fail "needs the go command (https://go.dev/doc/install)"
command -v unzip >/dev/null || fail "needs unzip (apt-get install unzip)"
mkdir -p "$out"

while read -r version; do
  case "$version" in '' | '#'*) continue ;; esac
  [ -s "$out/$version.json" ] && continue
  echo "k8s-schemas: k8s.io/kubernetes@$version"
  # -json prints the downloaded zip's path; the module is verified against the checksum database.
  zip=$(cd "$out" && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@$version" \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["Zip"])') \
    || fail "cannot download k8s.io/kubernetes@$version from the Go module proxy"
  unzip -p "$zip" "k8s.io/kubernetes@$version/api/openapi-spec/swagger.json" >"$out/$version.json.part"
  python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$out/$version.json.part" \
    || fail "$version: swagger.json is not JSON"
  mv "$out/$version.json.part" "$out/$version.json"
done <"$root/e2e/kubernetes-versions"
echo "k8s-schemas: $(find "$out" -name "*.json" | wc -l) schemas in $out"
