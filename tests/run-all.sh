#!/usr/bin/env bash
# Runs every test of ratewall: fmt, clippy, cargo test, the wasm build, the Python package and its
# tests, and the end-to-end tests against real redis-server, Envoy and nginx on loopback ports.
# Installs what it needs (apt packages, the wasm target, a Python venv in .venv) on first use.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
step() { printf '\n==== %s\n' "$*"; }

step "prerequisites"
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v nginx >/dev/null || need_apt+=(nginx)
command -v wrk >/dev/null || need_apt+=(wrk)
command -v wasm-opt >/dev/null || need_apt+=(binaryen)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
rustup target list --installed | grep -q wasm32-wasip1 || rustup target add wasm32-wasip1
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -r tests/requirements.txt
.venv/bin/pip install -q -r loadtest/requirements.txt
export PATH="$ROOT/.venv/bin:$PATH"

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --all-features -- -D warnings

step "build (release binaries + wasm filter)"
cargo build --release --workspace --exclude ratewall-filter --exclude ratewall-noop-filter
bash proxy-wasm-filter/build.sh
cargo build -p ratewall-core --target wasm32-wasip1 --no-default-features

step "cargo test"
cargo test --workspace --all-features

step "fuzz targets, 5 s each, two at a time (stable toolchain; docs/FUZZING.md)"
FUZZ_JOBS=2 FUZZ_PROFILE=fuzz-ci bash fuzz/run.sh 5

if [ -f pyo3-binding/pyproject.toml ]; then
  step "python package"
  .venv/bin/pip install -q ./pyo3-binding
fi

step "python and end-to-end tests"
pytest_dirs=()
for d in tests pyo3-binding/tests http-service/e2e proxy-wasm-filter/e2e loadtest/tests; do
  if compgen -G "$d/test_*.py" >/dev/null; then pytest_dirs+=("$d"); fi
done
if [ ${#pytest_dirs[@]} -gt 0 ]; then
  .venv/bin/python -m pytest -q -p no:cacheprovider "${pytest_dirs[@]}"
fi
step "load tests, short (locust with verdicts: ratewall-server with a Redis pause; the real gateway)"
.venv/bin/python loadtest/locust_service.py --rw-short --rw-fault --rw-out target/loadtest/service
.venv/bin/python loadtest/locust_gateway.py --rw-short --rw-out target/loadtest/gateway
step "all tests passed"
