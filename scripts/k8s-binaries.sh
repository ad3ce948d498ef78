#!/usr/bin/env bash
# Builds the upstream control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl, etcd) from the Go module proxy, at the versions
# pinned in deploy/k8s-build/go.mod, and caches them OUTSIDE the clone, keyed by the
# Kubernetes version and a hash of go.mod/go.sum: a second run builds nothing.
# Prints the bin directory on stdout (last line); progress and timings on stderr.
# `--where` prints the directory if it is built and fails otherwise, never building
# (palisade-kube-lab uses it to find the binaries).
# Environment: PALISADE_K8S_CACHE (default /var/cache/palisade/k8s).
# Go builds are CPU heavy on a shared machine: they run under nice -n 19 with -p=2
# unless PALISADE_GO_JOBS says otherwise.
set -euo pipefail

# The whole script is one function, so bash has read all of it before running any
# of it: editing this file while a long build runs cannot change what that run does.
main() {
  local here mod cache_root start k8s_version etcd_version pins out bins
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  mod="$here/deploy/k8s-build"
  cache_root="${PALISADE_K8S_CACHE:-/var/cache/palisade/k8s}"
  start=$(date +%s)

  k8s_version=$(awk '$1 == "k8s.io/kubernetes" { print $2; exit }' "$mod/go.mod")
  etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2; exit }' "$mod/go.mod")
  if [ -z "$k8s_version" ] || [ -z "$etcd_version" ]; then
    echo "k8s-binaries: $mod/go.mod must require k8s.io/kubernetes and go.etcd.io/etcd/server/v3" >&2
    exit 1
  fi
  pins=$(cat "$mod/go.mod" "$mod/go.sum" "$mod/cmd/etcd/main.go" | sha256sum | cut -c1-12)
  out="$cache_root/$k8s_version-etcd$etcd_version-$pins"
  bins=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubectl etcd)

  if [ "${1:-}" = "--where" ]; then
    [ -f "$out/complete" ] || { echo "k8s-binaries: not built yet ($out); run $0" >&2; exit 1; }
    echo "$out/bin"
    exit 0
  fi
  # The network-policy-api releases whose CRDs the tests install (crates/palisade-kube-lab
  # src/crds.rs names them; its unit test checks this line): fetched into the module
  # cache now so tests need no network. v0.3.0 is also in go.mod (ClusterNetworkPolicy);
  # v0.1.1 is the newest release that ships AdminNetworkPolicy/BaselineAdminNetworkPolicy.
  crd_releases=(sigs.k8s.io/network-policy-api@v0.3.0 sigs.k8s.io/network-policy-api@v0.1.1)
  # Go's upstream install puts it in /usr/local/go/bin, which a non-login shell's PATH
  # may lack.
  if ! command -v go >/dev/null && [ -x /usr/local/go/bin/go ]; then
    export PATH="/usr/local/go/bin:$PATH"
  fi
  command -v go >/dev/null || { echo "k8s-binaries: go is not installed (need Go >= 1.26)" >&2; exit 1; }
  (cd / && go mod download "${crd_releases[@]}")

  if [ -f "$out/complete" ]; then
    echo "k8s-binaries: warm: $k8s_version (etcd $etcd_version) already built, $(( $(date +%s) - start ))s" >&2
    echo "$out/bin"
    exit 0
  fi

  echo "k8s-binaries: cold: building Kubernetes $k8s_version and etcd $etcd_version into $out (this takes a while)" >&2
  mkdir -p "$cache_root"
  tmp=$(mktemp -d "$cache_root/.build.XXXXXX")
  trap 'rm -rf "$tmp"' EXIT

  cd "$mod"
  dl_start=$(date +%s)
  go mod download
  echo "k8s-binaries: modules downloaded in $(( $(date +%s) - dl_start ))s" >&2

  # Version stamps so `kubectl version` and /version say what was built, as upstream's
  # hack/lib/version.sh does (the module zip has no git metadata).
  minor=$(echo "$k8s_version" | cut -d. -f2)
  ldflags="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$k8s_version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
    ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done

  mkdir -p "$tmp/bin"
  for b in "${bins[@]}"; do
    case "$b" in
      etcd) pkg=./cmd/etcd ;;
      *) pkg="k8s.io/kubernetes/cmd/$b" ;;
    esac
    b_start=$(date +%s)
    CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=readonly -p=${PALISADE_GO_JOBS:-2}" \
      nice -n 19 go build -trimpath -ldflags "$ldflags" -o "$tmp/bin/$b" "$pkg"
    echo "k8s-binaries: built $b in $(( $(date +%s) - b_start ))s" >&2
  done
  "$tmp/bin/kubectl" version --client >&2
  "$tmp/bin/etcd" --version >&2

  chmod 755 "$tmp"
  printf '%s\n' "kubernetes $k8s_version" "etcd $etcd_version" "pins $pins" > "$tmp/complete"
  rm -rf "$out"
  mv "$tmp" "$out"
  trap - EXIT
  echo "k8s-binaries: cold build done in $(( $(date +%s) - start ))s" >&2
  echo "$out/bin"
}

main "$@"
