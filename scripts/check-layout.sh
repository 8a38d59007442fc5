#!/usr/bin/env bash
# The layering of docs/architecture.md, checked on the includes (a ctest,
# "layout"): each rule names a folder and the includes it may not have.
# Exits 1, listing every offending line, when one is broken.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0

# forbid FOLDER PATTERN WHY: no file directly in FOLDER (or below it, with
# -r as the first argument) includes a header matching PATTERN.
forbid() {
  local depth=(-maxdepth 1)
  if [ "$1" = "-r" ]; then depth=(); shift; fi
  local folder=$1 pattern=$2 why=$3 hits
  hits=$(find "$folder" "${depth[@]}" -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' \) \
           -exec grep -HnE "^[[:space:]]*#[[:space:]]*include[[:space:]]*[<\"]($pattern)" {} + || true)
  if [ -n "$hits" ]; then
    echo "layout: $folder: $why:" >&2
    echo "$hits" >&2
    status=1
  fi
}

forbid core 'core/(nn|qsm|io)/|cuda/|synth/|train/|infer/' "the floor uses only the standard library and itself"
forbid -r core/io 'core/(nn|qsm)/|cuda/|synth/|train/|infer/' "file formats depend on the floor only"
forbid -r core/nn 'core/qsm/|cuda/|synth/|train/|infer/' "the network engine knows no physics"
forbid -r core/qsm 'cuda/|synth/|train/|infer/' "the physics runs on the CPU, below the generator and the commands"
forbid -r core 'cuda_runtime|cuda\.h|cufft|cudnn|nccl' "core/ never includes a CUDA header"
forbid -r cuda 'synth/|train/|infer/' "the CUDA backend sits below the generator and the commands"
forbid -r synth 'train/|infer/' "the generator sits below the commands"
forbid -r infer 'train/' "deepqsm-infer never includes the trainer"

# The floor: at most six files of its own.
own=$(find core -maxdepth 1 -type f | wc -l)
if [ "$own" -gt 6 ]; then
  echo "layout: core/ holds $own files of its own (at most 6: the floor); move the rest into a room:" >&2
  find core -maxdepth 1 -type f >&2
  status=1
fi

[ $status -eq 0 ] && echo "layout: every include points down (docs/architecture.md)"
exit $status
