#!/usr/bin/env bash
# Runs the libFuzzer targets of fuzz/ (cargo-fuzz, nightly, AddressSanitizer, debug
# assertions and overflow checks on) on the committed seed corpus fuzz/seeds/TARGET.
# Fails on any crash, panic, failed invariant, leak, timeout (an input slower than 10 s
# is a hang) or out-of-memory; the input that did it is left in fuzz/artifacts/TARGET/.
#
#   scripts/fuzz.sh [--time SECONDS | --runs N] [--optimized] [TARGET...]
#
# --time S     each target runs S seconds (default 40: what CI runs, see scripts/test.sh)
# --runs N     each target runs N inputs (the long run: --runs 1000000)
# --optimized  build the targets optimized (cargo-fuzz's default release profile):
#              more inputs per second, but a cold build of the policy core with
#              sanitizers had not finished after 22 minutes on the shared 2-core
#              machine, so by default (and in CI) the targets build unoptimized (--dev)
# TARGET       manifest, cni, api, decision_event (default: all)
# New inputs found go to a scratch corpus (deleted on exit) unless FUZZ_CORPUS=DIR is
# set (then DIR/TARGET, kept, so repeated long runs build on each other); fuzz/seeds is
# only read.
set -euo pipefail
cd "$(dirname "$0")/.."
limit=(-max_total_time=40)
profile=(--dev)
targets=()
while [ $# -gt 0 ]; do
  case $1 in
    --time) limit=(-max_total_time="$2"); shift 2 ;;
    --runs) limit=(-runs="$2"); shift 2 ;;
    --optimized) profile=(); shift ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    -*) echo "fuzz.sh: unknown option $1" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
[ ${#targets[@]} -gt 0 ] || targets=(manifest cni api decision_event)
fuzz_bin=$(bash scripts/cargo-fuzz.sh)
export PATH="$(dirname "$fuzz_bin"):$PATH"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
cd fuzz
echo "== cargo fuzz build ${profile[*]} (nightly, sanitizer address)"
start=$(date +%s)
cargo +nightly fuzz build "${profile[@]}"
echo "fuzz build: $(( $(date +%s) - start )) s"
status=0
for t in "${targets[@]}"; do
  [ -d "seeds/$t" ] || { echo "fuzz.sh: no target $t (no fuzz/seeds/$t)" >&2; exit 2; }
  corpus=${FUZZ_CORPUS:+$FUZZ_CORPUS/$t}
  corpus=${corpus:-$scratch/$t}
  mkdir -p "$corpus"
  echo "== fuzz $t (${limit[*]})"
  start=$(date +%s)
  if cargo +nightly fuzz run "${profile[@]}" "$t" "$corpus" "seeds/$t" -- \
      "${limit[@]}" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      >"$scratch/$t.log" 2>&1; then
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$scratch/$t.log" | tail -1)
    echo "fuzz $t: ok, ${runs:-?} inputs in $(( $(date +%s) - start )) s"
  else
    status=1
    tail -60 "$scratch/$t.log"
    echo "fuzz $t: FAILED; the input is in fuzz/artifacts/$t/ (replay: cd fuzz && cargo +nightly fuzz run $t ARTIFACT)"
  fi
done
exit "$status"
