#!/usr/bin/env bash
# Build every fuzz target once and run each for a bounded time, on the stable toolchain.
#
#   fuzz/run.sh [seconds-per-target] [target ...]      (default: 20 s, every target)
#
# Environment: FUZZ_JOBS (targets run side by side, default 1), FUZZ_RSS_MB (libFuzzer's
# -rss_limit_mb, default 2048), FUZZ_TIMEOUT (seconds one input may take, default 10),
# FUZZ_LOG (directory for each target's log, default fuzz/target/logs), FUZZ_TARGET_DIR (cargo's
# target directory, default fuzz/target: the instrumented build never touches the workspace's),
# FUZZ_PROFILE (cargo profile, default release; CI uses fuzz-ci, a quicker cold build).
#
# No nightly and no -Z flag: libFuzzer comes from libfuzzer-sys (compiled from source by cc) and
# the coverage instrumentation is LLVM's SanitizerCoverage pass, requested through stable codegen
# options (-C passes, -C llvm-args), as cargo-fuzz does with `-s none`. No sanitizer runtime is
# linked (AddressSanitizer is a -Z option); Rust's own checks are on instead: debug assertions
# and overflow checks (fuzz/Cargo.toml's release profile), so a panic, an arithmetic overflow,
# an input slower than FUZZ_TIMEOUT or a memory blow-up is a failure.
#
# Seeds: fuzz/corpus/<target>/ (read only). What the fuzzer learns goes to
# fuzz/target/corpus/<target>/, a crashing input to fuzz/target/artifacts/<target>/.
# Exit status: 0 when every target ran its time without a failure, 1 otherwise (the failing
# targets, their log tails and reproducers are printed).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${1:-20}
shift || true
ALL=(config_yaml config_json rate descriptors mcp_body check_body slot_decode rls_request)
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=("${ALL[@]}")
JOBS=${FUZZ_JOBS:-1}
OUT=${FUZZ_TARGET_DIR:-$ROOT/fuzz/target}
LOGS=${FUZZ_LOG:-$OUT/logs}
HOST=$(rustc -vV | sed -n 's/^host: //p')

# --target: the flags apply to the targets' code only, not to build scripts and proc macros
# (which would not link without libFuzzer's coverage callbacks).
export RUSTFLAGS="${RUSTFLAGS:-} --cfg fuzzing -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares"
bins=()
for t in "${TARGETS[@]}"; do bins+=(--bin "$t"); done
PROFILE=${FUZZ_PROFILE:-release}
CARGO_TARGET_DIR=$OUT cargo build --manifest-path fuzz/Cargo.toml --profile "$PROFILE" --target "$HOST" "${bins[@]}"
BIN=$OUT/$HOST/$PROFILE

mkdir -p "$LOGS"
run_one() {
  local t=$1 work=$OUT/corpus/$1 art=$OUT/artifacts/$1/ rc=0
  mkdir -p "$work" "$art"
  # first corpus dir: where new inputs go; the committed seeds are only read
  "$BIN/$t" "$work" "$ROOT/fuzz/corpus/$t" \
    -max_total_time="$SECS" -timeout="${FUZZ_TIMEOUT:-10}" -rss_limit_mb="${FUZZ_RSS_MB:-2048}" \
    -max_len=65536 -artifact_prefix="$art" -print_final_stats=1 >"$LOGS/$t.log" 2>&1 || rc=$?
  echo "$rc" >"$LOGS/$t.rc"
}

running=0
for t in "${TARGETS[@]}"; do
  rm -f "$LOGS/$t.rc"
  run_one "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$JOBS" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

failed=()
for t in "${TARGETS[@]}"; do
  log=$LOGS/$t.log
  rc=$(cat "$LOGS/$t.rc" 2>/dev/null || echo missing)
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
  if [ "$rc" != 0 ]; then
    failed+=("$t")
    echo "FAIL $t (exit $rc; log: $log)"
    tail -40 "$log"
    ls "$OUT/artifacts/$t/" 2>/dev/null | sed "s|^|  reproducer: $OUT/artifacts/$t/|"
  else
    echo "ok   $t: ${SECS} s, ${runs:-?} executions, $cov"
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: failures in ${failed[*]} (reproduce: $BIN/<target> <artifact>)"
  exit 1
fi
