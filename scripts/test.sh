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
echo "== cargo test"
# One test thread per crate binary keeps privileged tests (netns, BPF pins) from
# fighting over the two cores; each test still uses unique names.
cargo test --workspace --no-fail-fast 2>&1 | tee target/test.log
