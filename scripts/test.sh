#!/usr/bin/env bash
# The test command: set the machine up from nothing, then run every check CI runs.
# Privileged tests (network namespaces, BPF) run for real: run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TERM_COLOR=never
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo build (binaries the lab tests run: palisade, palisade-cni)"
cargo build --workspace --bins --quiet
echo "== cargo test"
# Privileged tests (netns, BPF pins) use unique names and clean up after themselves,
# so test binaries may run their tests in parallel.
cargo test --workspace --no-fail-fast
