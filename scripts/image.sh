#!/usr/bin/env bash
# Builds Palisade's OCI image without a container daemon: the binaries (`palisade`,
# `palisade-cni`) and exactly the runtime libraries `ldd` says they load, as one layer,
# assembled with umoci and written as an OCI archive (a tar of an OCI image layout),
# which `skopeo copy oci-archive:FILE docker://REGISTRY/...`, `docker load` and
# `ctr image import` accept.
#
#   scripts/image.sh [--bin-dir DIR] [--tag TAG] [--out FILE]
#
# Without --bin-dir it runs `cargo build --release` for the two binaries first (the
# tests pass the debug binaries' directory instead, to keep CI short). Default tag: the
# workspace version; default output: target/palisade-image-TAG.oci.tar (or
# $CARGO_TARGET_DIR/...). Prints the archive's path on stdout (last line).
# Needs umoci (scripts/setup.sh installs it). Runs as root (file owners in the layer).
set -euo pipefail

main() {
  local here bin_dir="" tag="" out=""
  here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  while [ $# -gt 0 ]; do
    case "$1" in
      --bin-dir) bin_dir="$2"; shift 2 ;;
      --tag) tag="$2"; shift 2 ;;
      --out) out="$2"; shift 2 ;;
      *) echo "image: unknown argument $1 (see the head of $0)" >&2; exit 2 ;;
    esac
  done
  command -v umoci >/dev/null || { echo "image: umoci is not installed (scripts/setup.sh)" >&2; exit 1; }
  [ -n "$tag" ] || tag=$(awk -F'"' '/^version *=/ { print $2; exit }' "$here/Cargo.toml")
  local target="${CARGO_TARGET_DIR:-$here/target}"
  [ -n "$out" ] || out="$target/palisade-image-$tag.oci.tar"
  if [ -z "$bin_dir" ]; then
    (cd "$here" && cargo build --release --quiet -p palisade-cli -p palisade-cni --bins)
    bin_dir="$target/release"
  fi
  local bins=(palisade palisade-cni)
  for b in "${bins[@]}"; do
    [ -x "$bin_dir/$b" ] || { echo "image: $bin_dir/$b is missing" >&2; exit 1; }
  done

  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  local rootfs="$tmp/rootfs"
  mkdir -p "$rootfs/usr/local/bin" "$rootfs/tmp" "$rootfs/etc"
  chmod 1777 "$rootfs/tmp"
  for b in "${bins[@]}"; do
    install -m 0755 "$bin_dir/$b" "$rootfs/usr/local/bin/$b"
  done
  # Every library the binaries load, at the path the loader resolves it to here (the
  # interpreter included), and nothing else: no shell, no package manager.
  local libs
  libs=$(for b in "${bins[@]}"; do ldd "$bin_dir/$b"; done |
    awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' | sort -u)
  for lib in $libs; do
    mkdir -p "$rootfs$(dirname "$lib")"
    cp -L "$lib" "$rootfs$lib"
  done
  # The image's content list, for docs/install.md and the curious.
  (cd "$rootfs" && find . -type f | sort) > "$rootfs/etc/palisade-image-files"

  local layout="$tmp/oci"
  umoci init --layout "$layout"
  umoci new --image "$layout:$tag"
  umoci insert --image "$layout:$tag" "$rootfs" /
  umoci config --image "$layout:$tag" \
    --os linux --architecture amd64 \
    --config.entrypoint /usr/local/bin/palisade \
    --config.workingdir / \
    --config.label "org.opencontainers.image.title=palisade" \
    --config.label "org.opencontainers.image.version=$tag" \
    --author "Palisade" \
    --history.comment "scripts/image.sh: palisade, palisade-cni and their libraries"
  umoci gc --layout "$layout"
  mkdir -p "$(dirname "$out")"
  # An OCI archive is the layout as a tar: oci-layout, index.json, blobs/.
  tar -C "$layout" --owner=0 --group=0 --numeric-owner -cf "$out.tmp" oci-layout index.json blobs
  mv "$out.tmp" "$out"
  echo "image: $out ($tag, $(du -h "$out" | cut -f1); libraries: $(echo $libs))" >&2
  echo "$out"
}

main "$@"
