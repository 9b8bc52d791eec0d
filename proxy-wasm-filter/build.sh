#!/usr/bin/env bash
# Build the size-optimised wasm modules used by the Envoy configs, the e2e tests and the benchmark:
#   target/ratewall-wasm/ratewall_filter.wasm       (the filter)
#   target/ratewall-wasm/ratewall_noop_filter.wasm  (the benchmark's no-op baseline)
# Release build with opt-level=z, fat LTO, one codegen unit, stripped (profile overrides through
# environment variables, in a separate target dir so the workspace's release build is untouched),
# then binaryen's `wasm-opt -Oz` (Debian package `binaryen`; installed here if missing and apt is
# available, otherwise the unoptimised module is copied and a warning printed).
#
# Stable toolchain, no unstable flags: the modules link the prebuilt std of the wasm32-wasip1
# target (size goal on stable: <= 300 KB, checked by proxy-wasm-filter/e2e/test_validate.py).
#
# Optional, never the default and never needed by a test: RATEWALL_WASM_BUILD_STD=1 rebuilds std
# for size (about 45 KB smaller) with `cargo -Z build-std`, std's `optimize_for_size` feature, the
# `immediate-abort` panic strategy and `-Zlocation-detail=none`. Those are unstable options; on
# the stable toolchain they need RUSTC_BOOTSTRAP=1, which this opt-in sets. Its output goes to its
# own target dir (target/wasm-size-std) and, if the build fails, the stable build is used.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/ratewall-wasm
mkdir -p "$OUT"
rustup target list --installed 2>/dev/null | grep -q wasm32-wasip1 || rustup target add wasm32-wasip1
if ! command -v wasm-opt >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq binaryen >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq binaryen >/dev/null; }) || true
fi
export CARGO_PROFILE_RELEASE_OPT_LEVEL=z \
  CARGO_PROFILE_RELEASE_LTO=fat \
  CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1 \
  CARGO_PROFILE_RELEASE_STRIP=true \
  CARGO_PROFILE_RELEASE_PANIC=abort
PACKAGES=(-p ratewall-filter -p ratewall-noop-filter --target wasm32-wasip1)

build_std_for_size() {
  local sysroot
  sysroot=$(rustc --print sysroot) || return 1
  if [ ! -f "$sysroot/lib/rustlib/src/rust/library/Cargo.lock" ]; then
    rustup component add rust-src >/dev/null 2>&1 || return 1
  fi
  # Own target dir: std built with other flags must not evict the prebuilt-std build's cache.
  CARGO_TARGET_DIR=target/wasm-size-std \
  RUSTC_BOOTSTRAP=1 \
  RUSTFLAGS="${RUSTFLAGS:-} -Zunstable-options -Cpanic=immediate-abort -Zlocation-detail=none" \
    cargo build --release "${PACKAGES[@]}" \
      -Z build-std=std,panic_abort -Z build-std-features=optimize_for_size \
      --config 'profile.release.package.core.opt-level=3' \
      --config 'profile.release.package.alloc.opt-level=3' \
      --config 'profile.release.package.std.opt-level=3'
}

if [ "${RATEWALL_WASM_BUILD_STD:-0}" = 1 ] && build_std_for_size; then
  BUILT=target/wasm-size-std/wasm32-wasip1/release
else
  if [ "${RATEWALL_WASM_BUILD_STD:-0}" = 1 ]; then
    echo "warning: RATEWALL_WASM_BUILD_STD=1: rebuilding std for size failed; using the stable build" >&2
  fi
  CARGO_TARGET_DIR=target/wasm-size cargo build --release "${PACKAGES[@]}"
  BUILT=target/wasm-size/wasm32-wasip1/release
fi

for name in ratewall_filter ratewall_noop_filter; do
  in=$BUILT/$name.wasm
  if command -v wasm-opt >/dev/null; then
    # rustc >= 1.87 emits bulk-memory and sign-ext operations for wasm32-wasip1 (V8 runs them).
    wasm-opt -Oz --converge --enable-bulk-memory --enable-sign-ext --enable-mutable-globals \
      --enable-nontrapping-float-to-int --strip-debug --strip-producers "$in" -o "$OUT/$name.wasm.tmp"
    mv "$OUT/$name.wasm.tmp" "$OUT/$name.wasm"
  else
    echo "warning: wasm-opt not found; $name.wasm is not size-optimised" >&2
    cp "$in" "$OUT/$name.wasm"
  fi
  echo "$OUT/$name.wasm: $(stat -c %s "$OUT/$name.wasm") bytes"
done
