#!/usr/bin/env bash
# Verifies a backup (default: the newest) in TELOS_BACKUP_DIR (./backups):
# re-hashes its files and restores it into a scratch database. Exit 0 only if it is sound.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${TELOS_BIN:-./target/release/telos}"; [ -x "$bin" ] || bin=./target/debug/telos
exec "$bin" verify "$@"
