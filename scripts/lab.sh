#!/usr/bin/env bash
# The main job: set the machine up from nothing, build, and run the embedded lab:
# the AWS NetworkPolicy walkthrough on real packets between pods that are network
# namespaces on this machine, printing the measured truth matrix after each step.
# Extra arguments go to `palisade lab walkthrough` (e.g. --keep to leave the lab up).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export CARGO_TERM_COLOR=never
cargo build --release --quiet -p palisade-cli -p palisade-cni
exec target/release/palisade lab walkthrough --cni-bin target/release/palisade-cni "$@"
