#!/usr/bin/env bash
# Sets up and runs every check and test: formatting, clippy, unit and integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
./ops/setup.sh
start=$(date +%s)
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
echo "ops/test.sh: all checks passed in $(( $(date +%s) - start )) s"
