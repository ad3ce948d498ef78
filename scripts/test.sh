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
# Every test that pins removes its pin root, also when it fails: a palisade-* root
# under /sys/fs/bpf that appeared during the run and is still there is a leak.
palisade_pins() { { ls /sys/fs/bpf 2>/dev/null || true; } | { grep '^palisade-' || true; } | sort; }
pins_before=$(palisade_pins)
cargo test --workspace --no-fail-fast 2>&1 | tee "$log" || status=$?
leaked=$(comm -13 <(echo "$pins_before") <(palisade_pins) | { grep . || true; })
if [ -n "$leaked" ]; then
  echo "bpffs pin roots left behind by the tests (a test does not clean up):"
  echo "$leaked" | sed 's|^|  /sys/fs/bpf/|'
  status=1
fi
echo "== fuzz (scripts/fuzz.sh: every target 40 s on its seeds, AddressSanitizer)"
bash scripts/fuzz.sh || status=1
# cargo's last line is usually a doc-test binary's "0 passed"; close with the totals.
awk '/^test result:/ { p += $4; f += $6 } END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
