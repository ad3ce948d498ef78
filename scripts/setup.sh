#!/usr/bin/env bash
# Installs everything Palisade needs on a fresh Debian 12 machine (run as root).
# Idempotent: a second run changes nothing. Only the package registries are used.
# What it changes, and nothing else (README.md "Two commands" says the same):
#  - apt: installs the packages of need_pkgs that are missing (apt-get update first);
#  - bpffs: mounts it at /sys/fs/bpf if nothing is mounted there (until reboot).
set -euo pipefail

need_pkgs=(clang-19 llvm-19 libbpf-dev libclang-19-dev bpftool iproute2 iptables
           containernetworking-plugins iperf3 ethtool linux-libc-dev pkg-config
           umoci skopeo chromium)
missing=()
for p in "${need_pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# node and npm (the page test of `palisade view`, and its bundle's rebuild): Debian's,
# unless the machine already has them (as this one's image does).
command -v node >/dev/null && command -v npm >/dev/null || missing+=(nodejs npm)
if [ "${#missing[@]}" -gt 0 ]; then
  echo "setup: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# bpffs: pinned programs and maps live here so enforcement survives the agent.
if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
fi

# The machine's default iptables (its alternatives choice) is left as it is: the
# network benchmark and the tests call iptables-legacy* by name, inside network
# namespaces they create.

# The upstream Kubernetes control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, kube-proxy, kubectl, etcd) that palisade-kube-lab's tests run, built
# from the Go module proxy into /var/cache/palisade/k8s (outside the clone). Cold:
# about 15.5 minutes of a shared 2-core machine (under nice); warm: well under a second.
bash "$(dirname "${BASH_SOURCE[0]}")/k8s-binaries.sh" >/dev/null

# Helm's CLI (the chart tests render deploy/helm/palisade with it), built from the Go
# module proxy at the version deploy/helm-build/go.mod pins, into /var/cache/palisade/helm.
bash "$(dirname "${BASH_SOURCE[0]}")/helm-binary.sh" >/dev/null

# cargo-fuzz (the libFuzzer driver of fuzz/, see docs/fuzzing.md) at the version
# scripts/cargo-fuzz.sh pins, from crates.io into /var/cache/palisade/cargo-fuzz, and the
# nightly toolchain it builds with when rustup has none. Cold: about 2 minutes (plus
# the nightly download when missing); warm: instant.
bash "$(dirname "${BASH_SOURCE[0]}")/cargo-fuzz.sh" >/dev/null

# The front-end packages of `palisade view` (cytoscape, esbuild, playwright-core, pinned
# by crates/palisade-cli/view/package-lock.json), installed by `npm ci` into
# /var/cache/palisade/view-npm keyed by the lockfile's hash, outside the clone. Cold:
# about 6 s; warm: no work. playwright-core downloads no browser (the test drives
# Debian's chromium, installed above).
bash "$(dirname "${BASH_SOURCE[0]}")/view-npm.sh" >/dev/null
