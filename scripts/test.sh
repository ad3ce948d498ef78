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
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
# cargo's last line is usually a doc-test binary's "0 passed"; close with the totals.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
