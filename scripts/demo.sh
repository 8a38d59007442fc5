#!/usr/bin/env bash
# The README's main job: installs the dependencies, builds, and trains a
# small DeepQSM U-Net on the CPU from the embedded default config (synthetic
# cubes and spheres through the dipole kernel), then prints where the
# checkpoint went and how the network compares with TKD on held-out patches.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
./build/deepqsm train "$@"
