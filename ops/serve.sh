#!/usr/bin/env bash
# Sets up, builds (release) and runs the server on its embedded defaults:
# listens on TELOS_BIND (127.0.0.1:7777), keeps the world in TELOS_DATA_DIR (./data).
# Extra arguments go to `telos serve` (e.g. --bind 127.0.0.1:8080).
set -euo pipefail
cd "$(dirname "$0")/.."
./ops/setup.sh
# tch finds libtorch here (an absolute path, the same for every checkout, so clones share the
# compiled torch-sys instead of rebuilding it; .cargo/config.toml's relative link is the fallback).
export LIBTORCH="${LIBTORCH:-${TELOS_CACHE:-$HOME/.cache/telos}/libtorch-2.4.0}"
cargo build --release --locked
exec "${CARGO_TARGET_DIR:-target}/release/telos" serve "$@"
