#!/usr/bin/env bash
# Builds Helm's CLI from the Go module proxy, at the version pinned in
# deploy/helm-build/go.mod, and caches it OUTSIDE the clone, keyed by the Helm version
# and a hash of go.mod/go.sum: a second run builds nothing.
# Prints the binary's path on stdout (last line); progress and timings on stderr.
# `--where` prints the path if it is built and fails otherwise, never building (the
# chart tests use it to find helm).
# Environment: PALISADE_HELM_CACHE (default /var/cache/palisade/helm).
# The Go build runs under nice -n 19 with -p=2 unless PALISADE_GO_JOBS says otherwise.
set -euo pipefail

# One function, so bash has read all of it before running any of it.
main() {
  local here mod cache_root start version pins out
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  mod="$here/deploy/helm-build"
  cache_root="${PALISADE_HELM_CACHE:-/var/cache/palisade/helm}"
  start=$(date +%s)

  version=$(awk '$1 == "require" && $2 == "helm.sh/helm/v3" { print $3; exit }' "$mod/go.mod")
  if [ -z "$version" ]; then
    echo "helm-binary: $mod/go.mod must require helm.sh/helm/v3" >&2
    exit 1
  fi
  # The key covers this script too: its ldflags are part of what is built.
  pins=$(cat "$mod/go.mod" "$mod/go.sum" "$mod/tools.go" "${BASH_SOURCE[0]}" | sha256sum | cut -c1-12)
  out="$cache_root/$version-$pins"

  if [ "${1:-}" = "--where" ]; then
    [ -f "$out/complete" ] || { echo "helm-binary: not built yet ($out); run $0" >&2; exit 1; }
    echo "$out/bin/helm"
    exit 0
  fi
  if [ -f "$out/complete" ]; then
    echo "helm-binary: warm: helm $version already built, $(( $(date +%s) - start ))s" >&2
    echo "$out/bin/helm"
    exit 0
  fi

  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null || { echo "helm-binary: go is not installed (need Go >= 1.26)" >&2; exit 1; }

  echo "helm-binary: cold: building helm $version into $out" >&2
  mkdir -p "$cache_root"
  tmp=$(mktemp -d "$cache_root/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT

  cd "$mod"
  go mod download
  # The version stamp `helm version` prints, as Helm's Makefile sets it (the module
  # zip has no git metadata).
  ldflags="-s -w -X helm.sh/helm/v3/internal/version.version=$version"
  ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
  # The Kubernetes version `helm template` assumes (.Capabilities.KubeVersion) and lint
  # checks against, derived from client-go as Helm's Makefile does (v0.N -> 1.N).
  local client_go k8s_minor
  client_go=$(go list -m -f '{{.Version}}' k8s.io/client-go)
  k8s_minor=$(echo "$client_go" | cut -d. -f2)
  for pkg in helm.sh/helm/v3/pkg/lint/rules helm.sh/helm/v3/pkg/chartutil; do
    ldflags+=" -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$k8s_minor"
  done
  mkdir -p "$tmp/bin"
  CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly -p=${PALISADE_GO_JOBS:-2}" \
    nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/helm" helm.sh/helm/v3/cmd/helm
  "$tmp/bin/helm" version >&2

  chmod 755 "$tmp"
  printf '%s\n' "helm $version" "pins $pins" > "$tmp/complete"
  rm -rf "$out"
  mv "$tmp" "$out"
  trap - EXIT
  echo "helm-binary: cold build done in $(( $(date +%s) - start ))s" >&2
  echo "$out/bin/helm"
}

main "$@"
