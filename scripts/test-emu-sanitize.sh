#!/usr/bin/env bash
# The emu tests under AddressSanitizer and UndefinedBehaviorSanitizer: an
# out-of-bounds index in a kernel, a use of freed host memory or undefined
# arithmetic becomes a report and a failed test. Builds DEEPQSM_GPU=emu with
# -fsanitize=address,undefined into $ASAN_BUILD_DIR (default build-emu-asan)
# and runs ctest -L emu there. Slower than scripts/test-emu.sh (about 3x);
# not part of scripts/test.sh.
# UBSan's null check is off: with it on, every read of the emulated built-in
# variables (threadIdx, blockDim: thread_local, defined in cuda/emu/launch.cpp)
# from a fiber was reported as a member access through a null pointer, in the
# first run (2026-12-07; AddressSanitizer itself reported nothing in the 58
# tests); a two-file program with the same pattern does not reproduce it, so
# the cause is open. This script has not yet passed end to end with it off.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${ASAN_BUILD_DIR:-build-emu-asan}
flags="-fsanitize=address,undefined -fno-sanitize=null -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DDEEPQSM_GPU=emu \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined" >/dev/null
cmake --build "$build" -j"$(nproc)" --target deepqsm_gpu_tests
# Leaks are not the question here (the test programs keep caches to exit).
ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir "$build" -L emu --output-on-failure -j"$(nproc)"
