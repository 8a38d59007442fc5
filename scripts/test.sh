#!/usr/bin/env bash
# The README's test command: installs the Debian dependencies, builds
# everything (CUDA code compile-only when there is no GPU) and runs the
# test suite under ctest. GPU tests (label gpu) report as skipped without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# One architecture is enough to prove the CUDA code compiles; 90 is the
# machine GPU checks run on.
CUDA_ARCHS=${CUDA_ARCHS:-90} bash scripts/build.sh
# The V100 path: every kernel compiled for sm_70 with CUDA 12.9's headers and
# ptxas (clang-16 as the CUDA compiler), the host sources against its headers.
bash scripts/build-cuda12.sh --check
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j"$(nproc)"
# The GPU code run on the CPU emulator (DEEPQSM_GPU=emu, ctest -L emu), and
# the build without CUDA (DEEPQSM_GPU=off, toolkit hidden, then the tests):
# each in its own build folder (build-emu, build-off).
bash scripts/test-emu.sh
bash scripts/test-off.sh
# The file readers under libFuzzer: the seed corpus replayed, then 20 s of
# fuzzing per harness (scripts/fuzz.sh; about 3 minutes with its build).
# The checkpoint harness is only replayed in CI: fuzzing it reaches memory
# errors inside libhdf5's own parsing of damaged object headers within
# seconds (docs/hardening.md), not in our code, and any change to the corpus
# or the binary moves which one a 20 s run meets; fuzz it by hand.
FUZZ_SEED=1 FUZZ_REPLAY_ONLY=checkpoint bash scripts/fuzz.sh 20
