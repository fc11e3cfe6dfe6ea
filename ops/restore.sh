#!/usr/bin/env bash
# Restores the world from a backup: ./ops/restore.sh [BACKUP_ID]   (default: the newest)
#
# 1. takes the data directory's lock for the whole restore (refuses while a server runs);
# 2. rebuilds the database from the full backup and its incrementals into a NEW directory,
#    checking every file's sha256 and the restored object count (telos restore);
# 3. only if that succeeded, exchanges the restored directory with the data dir in ONE atomic
#    step (renameat2 RENAME_EXCHANGE), then keeps the old one as DATA.broken-TIME.
# Interrupted at any point, TELOS_DATA_DIR holds a complete world, the old one or the restored
# one; a leftover DATA.restore-* (half built, or the old world if the run stopped right after
# the exchange) is kept by the next run as DATA.broken-*. The server refuses to start an empty
# world while such remains lie beside a missing data dir.
set -euo pipefail
cd "$(dirname "$0")/.."
bin="${TELOS_BIN:-./target/release/telos}"; [ -x "$bin" ] || bin=./target/debug/telos
data="${TELOS_DATA_DIR:-./data}"
data="${data%/}"
stamp=$(date -u +%Y%m%dT%H%M%SZ)
staging="$data.restore-$stamp"
command -v flock >/dev/null || { echo "restore: flock (util-linux) is needed" >&2; exit 1; }
mkdir -p "$data"
exec 9>>"$data/telos.lock"
if ! flock -n 9; then
  echo "restore: a server is running on $data; stop it first" >&2
  exit 1
fi
# Remains of an interrupted run are never swapped in, and never deleted: kept aside.
for old in "$data".restore-*; do
  [ -e "$old" ] && mv -- "$old" "${old/.restore-/.broken-}" && echo "restore: kept an interrupted run's directory as ${old/.restore-/.broken-}"
done
"$bin" restore "$@" --to "$staging"
if [ -d "$data/world" ]; then
  "$bin" swap-dirs "$staging" "$data"
  mv "$staging" "$data.broken-$stamp"
  echo "restore: the old data dir is kept at $data.broken-$stamp"
else
  # No world to keep: the (empty) data dir is exchanged for the restored one all the same.
  "$bin" swap-dirs "$staging" "$data"
  rm -rf -- "$staging"
fi
echo "restore: $data now holds the restored world; start the server"
