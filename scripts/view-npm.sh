#!/usr/bin/env bash
# Installs the front-end packages of `palisade view` (crates/palisade-cli/view/
# package-lock.json: cytoscape, esbuild, playwright-core) with `npm ci`, OUTSIDE the
# clone, keyed by a hash of the lockfile: a second run installs nothing. The repository
# never holds node_modules. playwright-core downloads no browser: the page test drives
# Debian's /usr/bin/chromium.
# Prints the node_modules directory on stdout (last line); `--where` prints it if it is
# installed and fails otherwise, never installing (the page test uses it).
# Environment: PALISADE_NPM_CACHE (default /var/cache/palisade/view-npm).
set -euo pipefail

main() {
  local here view cache_root key out tmp
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  view="$here/crates/palisade-cli/view"
  cache_root="${PALISADE_NPM_CACHE:-/var/cache/palisade/view-npm}"
  key=$(cat "$view/package.json" "$view/package-lock.json" | sha256sum | cut -c1-12)
  out="$cache_root/$key"
  if [ "${1:-}" = "--where" ]; then
    [ -f "$out/complete" ] || { echo "view-npm: not installed yet ($out); run $0" >&2; exit 1; }
    echo "$out/node_modules"
    exit 0
  fi
  if [ ! -f "$out/complete" ]; then
    command -v npm >/dev/null || { echo "view-npm: npm is missing (Debian: apt-get install npm)" >&2; exit 1; }
    mkdir -p "$cache_root"
    tmp=$(mktemp -d "$cache_root/.tmp-XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    cp "$view/package.json" "$view/package-lock.json" "$tmp/"
    # No install scripts: none of these packages needs one (esbuild's binary comes in
    # its platform package), and none runs on this machine unasked.
    (cd "$tmp" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >&2)
    touch "$tmp/complete"
    rm -rf "$out"
    mv "$tmp" "$out"
    trap - EXIT
  fi
  echo "$out/node_modules"
}
main "$@"
