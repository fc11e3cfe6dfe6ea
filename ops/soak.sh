#!/usr/bin/env bash
# Soak test: starts a server on a fresh temporary world (127.0.0.1, a free port), drives
# CLIENTS WebSocket clients against it for MINUTES minutes (each alternating a read and a
# committed write, with PAUSE_MS between round trips), prints errors, latency p50/p99 and the
# server's RSS every 10 s, and stops the server.
#   ./ops/soak.sh [CLIENTS=1000] [MINUTES=10] [PAUSE_MS=100]
set -euo pipefail
cd "$(dirname "$0")/.."
clients="${1:-1000}"; minutes="${2:-10}"; pause="${3:-100}"
target="${CARGO_TARGET_DIR:-target}"
bin="${TELOS_BIN:-$target/release/telos}"; [ -x "$bin" ] || bin="$target/debug/telos"
[ -x "$bin" ] || { echo "soak: build telos first (cargo build --release)" >&2; exit 1; }
dir=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
TELOS_BIND=127.0.0.1:0 TELOS_DATA_DIR="$dir/data" TELOS_BACKUP_DIR="$dir/backups" TELOS_LOG=warn \
  TELOS_PERSONA_BACKEND=scripted "$bin" serve >"$dir/out" 2>"$dir/err" &
pid=$!
for _ in $(seq 1 600); do grep -q "listening on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
server=$(sed -n 's/^listening on //p' "$dir/out")
[ -n "$server" ] || { echo "soak: the server did not start:" >&2; cat "$dir/err" >&2; exit 1; }
echo "soak: server $server (pid $pid), binary $bin"
"$bin" soak --server "$server" --clients "$clients" --minutes "$minutes" --pause-ms "$pause" --pid "$pid"
