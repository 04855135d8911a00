#!/usr/bin/env bash
# Coverage-guided fuzzing of every parser of outside input: libFuzzer through
# `cargo fuzz`, on the stable toolchain (RUSTC_BOOTSTRAP=1 lets it pass the
# sanitizer flags), with AddressSanitizer. The targets are fuzz/harness.rs;
# the test command runs the same targets for a few seconds each without
# coverage (tests/fuzz.rs).
#
#   scripts/fuzz.sh [SECONDS per target, default 60] [TARGET ...]
#
# Seeds: fuzz/corpus/TARGET (committed). What libFuzzer adds goes to
# fuzz/corpus-work/TARGET; a crash to fuzz/artifacts/TARGET/ (both
# ignored by git). A crash, once fixed, belongs in fuzz/regressions/TARGET/.
# Prints one line per target: executions, time, coverage, crashes.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(jsonl requests gzip zstd parquet arrow manifest config)
fi
if ! command -v cargo-fuzz >/dev/null; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
export RUSTC_BOOTSTRAP=1
echo "== cargo fuzz build (release, debug assertions, AddressSanitizer)"
cargo fuzz build --sanitizer address
crashed=()
printf '%-9s %12s %8s %8s %8s %8s\n' target executions seconds exec/s coverage crashes
for t in "${targets[@]}"; do
  mkdir -p "fuzz/corpus-work/$t" "fuzz/artifacts/$t"
  dirs=("fuzz/corpus-work/$t" "fuzz/corpus/$t")
  [ -d "fuzz/regressions/$t" ] && dirs+=("fuzz/regressions/$t")
  log="fuzz/artifacts/$t.log"
  start=$(date +%s)
  if cargo fuzz run --sanitizer address "$t" "${dirs[@]}" -- \
      -max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -max_len=65536 \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 >"$log" 2>&1; then
    crashes=0
  else
    crashes=$(find "fuzz/artifacts/$t" -type f | wc -l)
    crashed+=("$t")
  fi
  took=$(( $(date +%s) - start ))
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  printf '%-9s %12s %8s %8s %8s %8s\n' "$t" "${runs:-?}" "$took" "${rate:-?}" "${cov:-?}" "$crashes"
done
if [ ${#crashed[@]} -gt 0 ]; then
  echo "crashes in: ${crashed[*]} (inputs under fuzz/artifacts/, logs fuzz/artifacts/TARGET.log)" >&2
  exit 1
fi
