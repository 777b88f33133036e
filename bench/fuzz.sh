#!/usr/bin/env bash
# Runs every fuzz target (fuzz/fuzz_targets/*.rs) for SECONDS each (default 60), starting from
# the checked-in seed corpus fuzz/corpus/TARGET (read only: what a run finds goes to a scratch
# directory, so the tree stays clean), and prints the executions per target.
#
#   bash bench/fuzz.sh [SECONDS] [TARGET...]
#
# Needs cargo-fuzz (`cargo install cargo-fuzz --locked`; .ci/run installs it). The machine's
# stable toolchain builds the targets with RUSTC_BOOTSTRAP=1 (libFuzzer and AddressSanitizer
# need -Z flags). A crash fails the run: the input is kept under fuzz/artifacts/TARGET/ and
# printed as hex (a CI log outlives the CI checkout). FUZZ_JOBS=2 runs two targets at a time;
# FUZZ_SANITIZER=none builds without AddressSanitizer (several times the executions per second,
# for long runs: keyward itself has no unsafe code); FUZZ_RUNS=N stops a target after N
# executions (SECONDS still caps it): `FUZZ_RUNS=10000000 FUZZ_SANITIZER=none bash bench/fuzz.sh 3600`.
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_EACH=${1:-60}
shift || true
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
  for f in fuzz/fuzz_targets/*.rs; do TARGETS+=("$(basename "$f" .rs)"); done
fi
export RUSTC_BOOTSTRAP=1
SAN=(--sanitizer "${FUZZ_SANITIZER:-address}")
cargo fuzz build -O "${SAN[@]}" >/dev/null 2>&1 || cargo fuzz build -O "${SAN[@]}"
SCRATCH=$(mktemp -d)
trap 'rm -rf "$SCRATCH"' EXIT
JOBS=${FUZZ_JOBS:-1}

run_one() {
  local t=$1 log="$SCRATCH/$1.log"
  mkdir -p "$SCRATCH/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
  if cargo fuzz run -O "${SAN[@]}" "$t" "$SCRATCH/$t" "fuzz/corpus/$t" -- \
      -max_total_time="$SECONDS_EACH" ${FUZZ_RUNS:+-runs="$FUZZ_RUNS"} -print_final_stats=1 >"$log" 2>&1; then
    echo ok >"$SCRATCH/$t.status"
  else
    echo crash >"$SCRATCH/$t.status"
  fi
}

running=0
for t in "${TARGETS[@]}"; do
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then wait -n || true; running=$((running - 1)); fi
done
wait

failed=0
printf '%-16s %14s %10s %12s\n' target executions seconds 'execs/s'
for t in "${TARGETS[@]}"; do
  log="$SCRATCH/$t.log"
  runs=$(grep -oE 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -oE '[0-9]+$' | tail -1)
  secs=$(grep -oE 'Done [0-9]+ runs in [0-9]+ second' "$log" | grep -oE 'in [0-9]+' | grep -oE '[0-9]+' | tail -1)
  printf '%-16s %14s %10s %12s\n' "$t" "${runs:-?}" "${secs:-?}" \
    "$([ -n "${runs:-}" ] && [ -n "${secs:-}" ] && [ "$secs" -gt 0 ] && echo $((runs / secs)) || echo '?')"
  if [ "$(cat "$SCRATCH/$t.status")" != ok ]; then
    failed=1
    echo "== $t FAILED; the fuzzer's report:"
    grep -E 'panicked|ERROR|SUMMARY|assert|Test unit written' "$log" | head -20 || tail -40 "$log"
    for crash in fuzz/artifacts/"$t"/*; do
      [ -f "$crash" ] || continue
      echo "== input $crash (replay: RUSTC_BOOTSTRAP=1 cargo fuzz run -O $t $crash):"
      xxd "$crash" | head -64
    done
  fi
done
exit "$failed"
