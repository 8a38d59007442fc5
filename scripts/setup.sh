#!/usr/bin/env bash
# Installs the Debian packages deepqsm builds against. Idempotent: packages
# already present are skipped, so a second run costs a dpkg query only.
# The CUDA toolkit (with cuDNN 9 and NCCL) is expected in /usr/local/cuda;
# it is not a Debian package and is not installed here.
set -euo pipefail

pkgs=(build-essential cmake pkg-config
      nlohmann-json3-dev libhdf5-dev catch2 libnifti2-dev libdnnl-dev
      libfftw3-dev libcli11-dev libopenmpi-dev libpng-dev zlib1g-dev)

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
  echo "setup: warning: no CUDA toolkit found (expected /usr/local/cuda); the build needs it" >&2
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
