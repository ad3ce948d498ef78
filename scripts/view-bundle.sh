#!/usr/bin/env bash
# Bundles the page of `palisade view` (crates/palisade-cli/view/src) with esbuild into
# one script, crates/palisade-cli/view/bundle.js (or $1), which the palisade binary
# embeds with include_str!. The bundle is checked in, so building Palisade needs no
# node; the test view_bundle_is_built_from_its_sources runs this script into a
# temporary file and compares. Packages come from scripts/view-npm.sh's cache.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
view="$here/crates/palisade-cli/view"
out="${1:-$view/bundle.js}"
modules=$(bash "$here/scripts/view-npm.sh")
cd "$view"
NODE_PATH="$modules" "$modules/.bin/esbuild" src/main.js --bundle --minify --format=iife \
  --target=es2020 --log-level=warning --outfile="$out"
