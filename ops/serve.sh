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
# The release binary is built for this machine: where the CPU has AVX-512, llama.cpp's AVX-512
# kernels evaluate prompts ~1.3x faster than the AVX2 baseline of .cargo/config.toml (measured
# on this project's 2-vCPU Xeon). Tests and other builds keep the portable baseline.
flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " $flags " == *" $1 "* ]]; }
if has avx512f && has avx512cd && has avx512vl && has avx512dq && has avx512bw; then
  export GGML_AVX512=ON
  has avx512_vnni && export GGML_AVX512_VNNI=ON
  has avx512vbmi && export GGML_AVX512_VBMI=ON
  has avx512_bf16 && export GGML_AVX512_BF16=ON
fi
cargo build --release --locked
exec "${CARGO_TARGET_DIR:-target}/release/telos" serve "$@"
