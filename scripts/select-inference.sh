#!/usr/bin/env bash
# How deepqsm-infer's defaults (--scales, --scale-sigma, --flips, --refine, --refine-tv, --refine-pad)
# are chosen for a model: on synthetic data only, never on in-vivo data.
# Generates a held-out evaluation set, runs deepqsm-infer with each option
# set, scores it with `deepqsm eval` (NRMSE %, demeaned, inside the mask) and
# prints a markdown table with the mean over the cases and the time per run.
#
# Cases (fixed seeds, none used in training):
#   whole    one 160^3 volume of the paper recipe, 0.002 ppm field noise,
#            scored over the whole volume
#   region1  two volumes whose sources and field lie only inside a random
#   region2  ellipsoid (data.region_prob 1), scored inside it: the shape of
#            an in-vivo local field after background removal
#   phantom  the head phantom (deepqsm phantom), clean and with 0.002 ppm
#   ph+noise noise, scored inside its brain mask
#   brain    the head phantom with in-vivo-like detail (deepqsm phantom
#   brain+n  --detail: folds, sulci, texture, 80 small veins), two detail
#            seeds, with 0.002 and 0.005 ppm noise, scored inside the mask:
#            structure at the scale of a few voxels, which the shapes of the
#            training recipe and the plain ellipsoids lack
#   proxy1   the in-vivo proxy (deepqsm proxy 1 and 2): the MNI152 2009
#   proxy2   brain under held-out deformations with literature chi, veins,
#            texture (case 2 also a 1.2 ppm haemorrhage), 0.002 and 0.004
#            ppm noise, scored inside the brain; the last column is the mean
#            |ROI mean - true ROI mean| over their seven deep-nuclei ROIs
#            (ppb), and the per-nucleus means are printed after the table.
#            Needs scripts/prepare-templates.sh (scripts/setup.sh runs it).
#
# Usage: scripts/select-inference.sh MODEL.h5 ['OPTIONS' ...]
#   e.g. scripts/select-inference.sh models/deepqsm-default.h5 '--scales 1' '--scales 2 --flips 4'
# Without option sets it compares a built-in list ("" = the defaults). TKD,
# Tikhonov and TV (deepqsm invert, literature defaults) and Tikhonov and TV
# with lambda chosen per case by the L-curve (--lambda lcurve, several
# minutes a case for TV) close the table as a yardstick.
# BUILD_DIR picks the build; CLASSICAL=0 leaves the classical rows out.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
build=${BUILD_DIR:-$root/build}
deepqsm=$build/deepqsm
infer=$build/deepqsm-infer
[ $# -ge 1 ] || { sed -n '2,36p' "$0" | sed 's/^# \{0,1\}//'; exit 2; }
model=$1
shift
[ -f "$model" ] || { echo "select-inference: no model file $model" >&2; exit 1; }
for b in "$deepqsm" "$infer"; do
  [ -x "$b" ] || { echo "select-inference: $b not found; build first (scripts/build.sh)" >&2; exit 1; }
done
if [ $# -gt 0 ]; then
  sets=("$@")
else
  sets=("" "--scales 1 --refine 0" "--scales 2 --refine 0" "--refine-tv 0" "--refine-pad 0"
        "--scales 1" "--flips 1" "--flips 8" "--scales 3")
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
seed=987654321
echo '{"volume_size": 160, "patches_per_volume": 1, "pad": 32, "noise_std": 0.002}' >"$work/whole.json"
echo '{"volume_size": 160, "patches_per_volume": 1, "pad": 32, "noise_std": 0.002, "region_prob": 1}' \
  >"$work/region.json"
"$deepqsm" synth --config "$work/whole.json" --volumes 1 --seed $seed --out "$work/w.h5" \
  --volumes-out "$work/whole" --quiet >/dev/null
"$deepqsm" synth --config "$work/region.json" --volumes 2 --seed $seed --out "$work/r.h5" \
  --volumes-out "$work/region" --quiet >/dev/null
"$deepqsm" phantom -o "$work/ph_field.nii.gz" --chi "$work/ph_chi.nii.gz" \
  --mask "$work/ph_mask.nii.gz" >/dev/null
"$deepqsm" phantom -o "$work/phn_field.nii.gz" --noise-std 0.002 --seed 5 >/dev/null
"$deepqsm" phantom -o "$work/b1_field.nii.gz" --chi "$work/b1_chi.nii.gz" --detail 1 \
  --noise-std 0.002 --seed 6 >/dev/null
"$deepqsm" phantom -o "$work/b2_field.nii.gz" --chi "$work/b2_chi.nii.gz" --detail 2 \
  --noise-std 0.005 --seed 7 >/dev/null
for p in 1 2; do
  "$deepqsm" proxy $p -o "$work/p${p}_field.nii.gz" --chi "$work/p${p}_chi.nii.gz" \
    --mask "$work/p${p}_mask.nii.gz" --labels "$work/p${p}_labels.nii.gz" \
    --noise-std "0.00$((2 * p))" --seed $((7 + p)) >/dev/null
done

# name field chi mask("" = whole grid)
cases=("whole $work/whole/field_0000.nii.gz $work/whole/chi_0000.nii.gz -"
       "region1 $work/region/field_0000.nii.gz $work/region/chi_0000.nii.gz $work/region/mask_0000.nii.gz"
       "region2 $work/region/field_0001.nii.gz $work/region/chi_0001.nii.gz $work/region/mask_0001.nii.gz"
       "phantom $work/ph_field.nii.gz $work/ph_chi.nii.gz $work/ph_mask.nii.gz"
       "ph+noise $work/phn_field.nii.gz $work/ph_chi.nii.gz $work/ph_mask.nii.gz"
       "brain $work/b1_field.nii.gz $work/b1_chi.nii.gz $work/ph_mask.nii.gz"
       "brain+n $work/b2_field.nii.gz $work/b2_chi.nii.gz $work/ph_mask.nii.gz"
       "proxy1 $work/p1_field.nii.gz $work/p1_chi.nii.gz $work/p1_mask.nii.gz"
       "proxy2 $work/p2_field.nii.gz $work/p2_chi.nii.gz $work/p2_mask.nii.gz")

echo "model: $model ($(nproc) cores; NRMSE %, demeaned, inside the mask; synthetic data only)"
echo
header="| options |"
rule="| --- |"
for c in "${cases[@]}"; do header+=" ${c%% *} |"; rule+=" ---: |"; done
echo "$header mean | s per run | proxy ROI ppb |"
echo "$rule ---: | ---: | ---: |"
rois=$work/rois.txt
: >"$rois"
# The classical inversions with their literature defaults, and Tikhonov and
# TV with lambda by the L-curve, close the table as a yardstick for the cases
# (no model involved).
classical=("classical tkd" "classical tikhonov" "classical tv"
           "classical tikhonov --lambda lcurve" "classical tv --lambda lcurve")
[ "${CLASSICAL:-1}" != 0 ] || classical=()
for opts in "${sets[@]}" ${classical[@]+"${classical[@]}"}; do
  if [[ $opts == classical* ]]; then row="| ${opts#classical } (reference) |"; else row="| \`${opts:-(defaults)}\` |"; fi
  sum=0
  secs=0
  roi=0
  for c in "${cases[@]}"; do
    read -r _ field chi mask <<<"$c"
    mask_args=()
    [ "$mask" = "-" ] || mask_args=(--mask "$mask")
    t0=$(date +%s.%N)
    if [[ $opts == classical* ]]; then
      # shellcheck disable=SC2086  # the method and its options are split on purpose
      "$deepqsm" invert ${opts#classical } "$field" -o "$work/out.nii.gz" "${mask_args[@]}" >/dev/null
    else
      # shellcheck disable=SC2086  # the option set is split on purpose
      "$infer" "$field" -o "$work/out.nii.gz" --model "$model" "${mask_args[@]}" $opts >/dev/null
    fi
    t1=$(date +%s.%N)
    label_args=()
    [[ ${c%% *} != proxy* ]] || label_args=(--labels "${mask%_mask.nii.gz}_labels.nii.gz")
    "$deepqsm" eval "$work/out.nii.gz" --ref "$chi" "${mask_args[@]}" "${label_args[@]}" --json \
      >"$work/eval.json"
    v=$(python3 -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["NRMSE"])' "$work/eval.json")
    row+=" $v |"
    if [ ${#label_args[@]} -gt 0 ]; then
      # Mean |ROI mean - truth| over the seven nuclei (ppb), and one line per case for after the table.
      roi=$(python3 - "$work/eval.json" "$roi" "${opts:-(defaults)}" "${c%% *}" "$rois" <<'PY'
import json, sys
j, acc, opts, case, out = json.load(open(sys.argv[1])), float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
labs = j["labels"]
err = sum(abs(labs[k]["diff"]) for k in labs) / len(labs) * 1000
with open(out, "a") as f:
    f.write("| `%s` | %s | %s |\n" % (opts, case, " | ".join(
        "%.0f (%.0f)" % (labs[str(i)]["pred_mean"] * 1000, labs[str(i)]["ref_mean"] * 1000)
        if str(i) in labs else "-" for i in range(1, 8))))
print(acc + err / 2)
PY
)
    fi
    sum=$(python3 -c "print($sum + $v)")
    secs=$(python3 -c "print($secs + $t1 - $t0)")
  done
  n=${#cases[@]}
  echo "$row $(python3 -c "print('%.2f' % ($sum / $n))") | $(python3 -c "print('%.1f' % ($secs / $n))") | $(python3 -c "print('%.1f' % $roi)") |"
done
echo
echo "Deep-nuclei ROI means of the proxy cases, ppb: prediction (truth)"
echo
echo "| options | case | caudate | putamen | pallidus | thalamus | nigra | red nucl. | dentate |"
echo "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
cat "$rois"
