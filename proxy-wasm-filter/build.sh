#!/usr/bin/env bash
# Build the size-optimised wasm modules used by the Envoy configs, the e2e tests and the benchmark:
#   target/ratewall-wasm/ratewall_filter.wasm       (the filter)
#   target/ratewall-wasm/ratewall_noop_filter.wasm  (the benchmark's no-op baseline)
# Release build with opt-level=z, fat LTO, one codegen unit, stripped (profile overrides through
# environment variables, in a separate target dir so the workspace's release build is untouched),
# then binaryen's `wasm-opt -Oz` (Debian package `binaryen`; installed here if missing and apt is
# available, otherwise the unoptimised module is copied and a warning printed).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/ratewall-wasm
mkdir -p "$OUT"
rustup target list --installed 2>/dev/null | grep -q wasm32-wasip1 || rustup target add wasm32-wasip1
if ! command -v wasm-opt >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq binaryen >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen >/dev/null; }) || true
fi
CARGO_TARGET_DIR=target/wasm-size \
CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
CARGO_PROFILE_RELEASE_LTO=fat \
CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
CARGO_PROFILE_RELEASE_STRIP=true \
CARGO_PROFILE_RELEASE_PANIC=abort \
  cargo build --release -p ratewall-filter -p ratewall-noop-filter --target wasm32-wasip1
for name in ratewall_filter ratewall_noop_filter; do
  in=target/wasm-size/wasm32-wasip1/release/$name.wasm
  if command -v wasm-opt >/dev/null; then
    # rustc >= 1.87 emits bulk-memory and sign-ext operations for wasm32-wasip1 (V8 runs them).
    wasm-opt -Oz --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
      --enable-nontrapping-float-to-int --strip-debug --strip-producers "$in" -o "$OUT/$name.wasm.tmp"
    mv "$OUT/$name.wasm.tmp" "$OUT/$name.wasm"
  else
    echo "warning: wasm-opt not found; $name.wasm is not size-optimised" >&2
    cp "$in" "$OUT/$name.wasm"
  fi
  echo "$OUT/$name.wasm: $(stat -c %s "$OUT/$name.wasm") bytes"
done
