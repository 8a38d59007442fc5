#!/usr/bin/env bash
# The README's main job: installs the dependencies, builds, and runs
# deepqsm-infer with the shipped default model (models/deepqsm-default.h5) on
# an example field map, writing into runs/demo/:
#   - the 2016 QSM challenge field (../shared/data/qsm2016) when present,
#     scored against its COSMOS reference next to TKD;
#   - otherwise the project's head phantom (`deepqsm phantom`), scored
#     against the phantom's true chi next to TKD.
# Extra arguments go to deepqsm-infer (e.g. --tile 96).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/build.sh
build=${BUILD_DIR:-build}
out=runs/demo
mkdir -p "$out"

data=../shared/data/qsm2016
if [ -f "$data/phs_tissue.nii.gz" ] && [ -f "$data/msk.nii.gz" ]; then
  echo "== example: the 2016 QSM challenge field ($data)"
  field=$data/phs_tissue.nii.gz
  mask=$data/msk.nii.gz
  ref=$data/chi_cosmos.nii.gz
  [ -f "$ref" ] || ref=
  ref_name="COSMOS"
else
  echo "== example: the head phantom (no $data here)"
  "$build/deepqsm" phantom -o "$out/phantom_field.nii.gz" --chi "$out/phantom_chi.nii.gz" \
    --mask "$out/phantom_mask.nii.gz"
  field=$out/phantom_field.nii.gz
  mask=$out/phantom_mask.nii.gz
  ref=$out/phantom_chi.nii.gz
  ref_name="the phantom's true chi"
fi

echo "== deepqsm-infer"
"$build/deepqsm-infer" "$field" --mask "$mask" -o "$out/chi.nii.gz" --preview "$out/preview.png" "$@"

if [ -n "$ref" ]; then
  echo "== TKD (threshold 0.19) for comparison"
  "$build/deepqsm" invert tkd "$field" --mask "$mask" -o "$out/chi_tkd.nii.gz" >/dev/null
  echo "== DeepQSM (default model) against $ref_name"
  "$build/deepqsm" eval "$out/chi.nii.gz" --ref "$ref" --mask "$mask"
  echo "== TKD against $ref_name"
  "$build/deepqsm" eval "$out/chi_tkd.nii.gz" --ref "$ref" --mask "$mask"
fi

echo "== wrote"
for f in "$out"/*; do echo "  $f"; done
