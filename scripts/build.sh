#!/usr/bin/env bash
# Configures and builds deepqsm into build/ (or $BUILD_DIR). $DEEPQSM_GPU
# picks the GPU mode: cuda (the default where a toolkit is found, else off),
# emu (the CUDA code on the CPU emulator) or off (no CUDA; needs no toolkit).
# With cuda the CUDA code is always compiled (so it never rots), for the
# architectures in $CUDA_ARCHS (default: what the toolkit supports among 70;80;90).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
args=(-S . -B "$build" -DCMAKE_BUILD_TYPE=Release)
gpu=${DEEPQSM_GPU:-}
if [ -z "$gpu" ]; then
  gpu=cuda
  if ! command -v nvcc >/dev/null 2>&1 && [ ! -x /usr/local/cuda/bin/nvcc ] &&
     [ ! -x "${CUDA_PATH:-/nonexistent}/bin/nvcc" ]; then
    echo "build: no CUDA toolkit found: building without CUDA (DEEPQSM_GPU=off)" >&2
    gpu=off
  fi
fi
args+=("-DDEEPQSM_GPU=${gpu}")
[ "$gpu" = cuda ] && [ -n "${CUDA_ARCHS:-}" ] && args+=("-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS}")
[ "${CI:-}" = "true" ] && args+=(-DDEEPQSM_WERROR=ON)
cmake "${args[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)"
