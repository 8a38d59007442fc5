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
# The host sources against CUDA 12's headers, the toolkit of V100 users
# (PyPI has no CUDA 12 nvcc to compile the kernels for sm_70 in CI).
bash scripts/build-cuda12.sh --check
ctest --test-dir "${BUILD_DIR:-build}" --output-on-failure -j"$(nproc)"
# The GPU code run on the CPU emulator (DEEPQSM_GPU=emu, ctest -L emu), and
# the build without CUDA (DEEPQSM_GPU=off, toolkit hidden, then the tests):
# each in its own build folder (build-emu, build-off).
bash scripts/test-emu.sh
bash scripts/test-off.sh
