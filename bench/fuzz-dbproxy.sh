#!/usr/bin/env bash
# fuzz-dbproxy.sh -- the DB proxy's packet, handshake, EXECUTE-parameter and SQL-routing
# parsers under random and mutated input for longer than CI runs them (in-process
# property tests; cargo-fuzz needs a nightly toolchain, which this machine cannot get).
# Usage: ITERS=2000000 bash bench/fuzz-dbproxy.sh      (default 1,000,000 per test)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/cache/tessera/target}
export TESSERA_FUZZ_ITERS=${ITERS:-1000000}
start=$(date +%s)
cargo nextest run --release --no-fail-fast \
  -E 'test(parsers_survive_random_and_mutated_input) | test(truncated_and_random_executes_are_errors_not_panics) | test(bad_sql_is_reported_not_panicked)'
echo "fuzzed $TESSERA_FUZZ_ITERS inputs per target in $(( $(date +%s) - start )) s"
