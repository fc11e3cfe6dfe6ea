#!/usr/bin/env bash
# Restores the world from a backup: ./ops/restore.sh [BACKUP_ID]   (default: the newest)
#
# 1. rebuilds the database from the full backup and its incrementals into a NEW directory,
#    checking every file's sha256 and the restored object count (telos restore);
# 2. only if that succeeded, moves the current data dir aside (kept as DATA.broken-TIME)
#    and moves the restored one into its place.
# The server must be stopped. Never leaves a half-restored world in TELOS_DATA_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${TELOS_BIN:-./target/release/telos}"; [ -x "$bin" ] || bin=./target/debug/telos
data="${TELOS_DATA_DIR:-./data}"
data="${data%/}"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
staging="$data.restore-$stamp"
if [ -e "$data/telos.lock" ] && command -v flock >/dev/null && ! flock -n "$data/telos.lock" true; then
  echo "restore: a server is running on $data; stop it first" >&2
  exit 1
fi
"$bin" restore "$@" --to "$staging"
if [ -e "$data" ]; then
  mv "$data" "$data.broken-$stamp"
  echo "restore: the old data dir is kept at $data.broken-$stamp"
fi
mv "$staging" "$data"
echo "restore: $data now holds the restored world; start the server"
