#!/usr/bin/env bash
# Builds tessera (static release binary) and runs every role in one process with the demo.
# Usage: scripts/demo.sh [extra `tessera up` flags]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh build
cargo build --release
exec "${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/tessera" up --demo "$@"
