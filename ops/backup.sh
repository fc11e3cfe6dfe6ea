#!/usr/bin/env bash
# Takes a backup through the running server: ./ops/backup.sh [--full]
# (for cron: 0 3 * * * /path/to/telos/ops/backup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${TELOS_BIN:-./target/release/telos}"; [ -x "$bin" ] || bin=./target/debug/telos
exec "$bin" backup "$@"
