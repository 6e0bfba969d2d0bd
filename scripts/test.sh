#!/usr/bin/env bash
# Runs every check CI runs: format, lints, and all tests against the real binary.
# Installs the system packages it needs first. Release profile throughout, so the C++
# of rocksdb is compiled once and shared by clippy, the tests and the shipped binary.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh test
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start ))s)"; }

step "cargo fmt --check"
cargo fmt --check

step "cargo clippy"
cargo clippy --release --all-targets --locked -- -D warnings

step "tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --release --locked --no-fail-fast
else
  echo "cargo-nextest not found; using cargo test"
  cargo test --release --locked --no-fail-fast
fi

bin="${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/tessera"
step "release binary"
ls -l "$bin"
ldd "$bin" || true

# The console: its dependencies were installed and its dist built by build.rs (npm ci).
step "console: component tests (Vitest)"
(cd ui && npm test)

step "console: end to end (Playwright + Chromium against tessera up --demo)"
(cd ui && TESSERA_BIN="$(realpath "$bin")" npm run e2e)
echo "done in $(( $(date +%s) - start ))s"
