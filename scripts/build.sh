#!/usr/bin/env bash
# Configures and builds deepqsm into build/ (or $BUILD_DIR). CUDA code is
# always compiled (so it never rots), for the architectures in
# $CUDA_ARCHS (default: what the toolkit supports among 70;80;90).
# $DEEPQSM_GPU picks the GPU mode: cuda (default), emu (the CUDA code on the
# CPU emulator) or off (no CUDA; needs no toolkit).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build}
args=(-S . -B "$build" -DCMAKE_BUILD_TYPE=Release)
gpu=${DEEPQSM_GPU:-cuda}
args+=("-DDEEPQSM_GPU=${gpu}")
[ "$gpu" = cuda ] && [ -n "${CUDA_ARCHS:-}" ] && args+=("-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS}")
[ "${CI:-}" = "true" ] && args+=(-DDEEPQSM_WERROR=ON)
cmake "${args[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)"
