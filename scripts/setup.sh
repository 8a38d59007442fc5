#!/usr/bin/env bash
# Installs the Debian packages deepqsm builds against. Idempotent: packages
# already present are skipped, so a second run costs a dpkg query only.
# The CUDA toolkit (with cuDNN 9 and NCCL) is expected in /usr/local/cuda;
# it is not a Debian package and is not installed here.
set -euo pipefail

pkgs=(build-essential cmake pkg-config
      nlohmann-json3-dev libhdf5-dev catch2 libnifti2-dev libdnnl-dev
      libfftw3-dev libcli11-dev libopenmpi-dev libpng-dev zlib1g-dev)
# ONNX export/import (core/onnx/): the ONNX library's protobuf classes and
# checker; python3-venv for the test tooling below.
pkgs+=(libonnx-dev libprotobuf-dev python3 python3-venv)
# clang-16: the CUDA compiler for the sm_70 (V100) check in scripts/build-cuda12.sh --check.
pkgs+=(clang-16)
# libFuzzer for scripts/fuzz.sh (issue 26): clang and its sanitizer runtimes.
pkgs+=(clang libclang-rt-14-dev)

missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all Debian dependencies present"
else
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null 2>&1; then
  echo "setup: warning: no CUDA toolkit found (expected /usr/local/cuda); building without CUDA (DEEPQSM_GPU=off)" >&2
fi

# Test tooling from PyPI (not needed to build or run deepqsm): onnxruntime,
# with numpy, for the ctest onnx_runtime (tests/onnx/), in a venv outside the
# repository ($DEEPQSM_PYENV; ~50 MB of wheels). Best effort: without it that
# test reports as skipped.
pyenv=${DEEPQSM_PYENV:-$HOME/.cache/deepqsm/pyenv}
if [ -x "$pyenv/bin/python" ] && "$pyenv/bin/python" -c "import onnxruntime" 2>/dev/null; then
  echo "setup: onnxruntime present in $pyenv"
elif python3 -m venv "$pyenv" >/dev/null 2>&1 &&
     "$pyenv/bin/pip" install -q --disable-pip-version-check onnxruntime numpy; then
  echo "setup: onnxruntime installed in $pyenv"
else
  echo "setup: warning: could not install onnxruntime into $pyenv; the onnx_runtime test will be skipped" >&2
fi

# The MNI152 2009 templates of the brain-shaped generator and the in-vivo
# proxy (synth/brain.h), from the nilearn wheel on PyPI by pip (Debian's
# python3-pip when python3 has no pip): about 5 MB, into data/mni152-2009/.
if ! python3 -m pip --version >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip
fi
bash "$(dirname "$0")/prepare-templates.sh"
