#!/usr/bin/env bash
# Sets up and runs every check and test: formatting, clippy, unit and integration tests, and the
# page's end-to-end test in headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."
./ops/setup.sh
# tch finds libtorch here (an absolute path, the same for every checkout, so clones share the
# compiled torch-sys instead of rebuilding it; .cargo/config.toml's relative link is the fallback).
export LIBTORCH="${LIBTORCH:-${TELOS_CACHE:-$HOME/.cache/telos}/libtorch-2.4.0}"
start=$(date +%s)
cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
cargo test --locked --all-targets
# The page, end to end, against the binary the tests just built.
(cd tests/e2e && npm ci --no-audit --no-fund --silent)
TELOS_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/telos" node --test tests/e2e/page.test.mjs tests/e2e/openapi.test.mjs
echo "ops/test.sh: all checks passed in $(( $(date +%s) - start )) s"
