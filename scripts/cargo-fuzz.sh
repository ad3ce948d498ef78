#!/usr/bin/env bash
# Installs cargo-fuzz (libFuzzer driver for the targets in fuzz/) from crates.io at the
# version pinned here, into /var/cache/palisade/cargo-fuzz/<version> (outside the clone,
# keyed by version, so a second run and a second clone reuse it), and the nightly
# toolchain its sanitizer builds need. Prints the binary's path.
#  --where  print the path the binary has (or will have) and change nothing.
# Cold: about 2 minutes of a shared 2-core machine (compiling cargo-fuzz); warm: instant.
set -euo pipefail
version=0.13.2
root=${PALISADE_CACHE:-/var/cache/palisade}/cargo-fuzz/$version
bin=$root/bin/cargo-fuzz
if [ "${1:-}" = "--where" ]; then
  echo "$bin"
  exit 0
fi
# cargo-fuzz builds with -Zsanitizer, which only nightly accepts.
if ! rustup toolchain list | grep -q '^nightly-'; then
  echo "cargo-fuzz: installing the nightly toolchain (minimal profile)" >&2
  rustup toolchain install nightly --profile minimal >&2
fi
if [ ! -x "$bin" ]; then
  echo "cargo-fuzz: cold: installing cargo-fuzz $version into $root" >&2
  tmp=$root.tmp.$$
  rm -rf "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  nice cargo install --quiet --locked --version "$version" --root "$tmp" cargo-fuzz >&2
  mkdir -p "$(dirname "$root")"
  rm -rf "$root"
  mv "$tmp" "$root"
fi
echo "$bin"
