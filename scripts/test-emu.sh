#!/usr/bin/env bash
# The GPU code on the CPU: builds DEEPQSM_GPU=emu (the CUDA sources compiled
# by the host compiler against cuda/emu, no CUDA toolkit used) into
# $EMU_BUILD_DIR (default build-emu) and runs the GPU tests there, in block
# order and shuffled, plus the check that every kernel was launched
# (ctest -L emu). Part of scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${EMU_BUILD_DIR:-build-emu}
start=$(date +%s)
DEEPQSM_GPU=emu BUILD_DIR="$build" bash scripts/build.sh
built=$(date +%s)
ctest --test-dir "$build" -L emu --no-tests=error --output-on-failure -j"$(nproc)"
echo "test-emu: build $((built - start)) s, ctest -L emu $(($(date +%s) - built)) s"
