# Shared by scripts/experiment1.sh and scripts/experiment2.sh (sourced, not
# run): finds the binaries, runs one method on one field map, scores it with
# `deepqsm eval` (JSON + difference-map and histogram PNGs) and appends a
# row to a markdown table.
#
# Literature defaults, never tuned on the evaluation data:
#   TKD threshold 0.19 (Wharton et al. 2010)
#   Tikhonov identity, lambda 1e-2 (QSM.jl's tikh default; Bilgic et al. 2014 closed form)
#   TV lambda 1e-3, rho 100 lambda, <= 250 iterations, tol 1e-3 (QSM.jl's tv defaults;
#      ADMM of Bilgic et al. 2014)
# all printed by `deepqsm invert --help`.

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${BUILD_DIR:-$root/build}
deepqsm=${DEEPQSM:-$build/deepqsm}
infer=${DEEPQSM_INFER:-$build/deepqsm-infer}
[ -x "$deepqsm" ] || { echo "experiment: $deepqsm not found; build first (scripts/build.sh) or set DEEPQSM" >&2; exit 1; }

# deepqsm-infer and its default model are optional: without them the
# DeepQSM column is skipped with a message.
have_deepqsm=1
if [ ! -x "$infer" ]; then
  echo "experiment: $infer not found: skipping the DeepQSM column" >&2
  have_deepqsm=0
fi

table_header() {  # $1: markdown file
  printf '| volume | method | NRMSE %% | dNRMSE %% | HFEN %% | XSIM | SSIM | pSNR dB | corr | error mean ppm | error std ppm | time s |\n' >>"$1"
  printf '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n' >>"$1"
}

# reconstruct METHOD FIELD MASK(or "") OUT_NII -> 0 on success, 1 when skipped
reconstruct() {
  local method=$1 field=$2 mask=$3 out=$4
  local mask_args=()
  [ -n "$mask" ] && mask_args=(--mask "$mask")
  case $method in
    deepqsm)
      [ "$have_deepqsm" = 1 ] || return 1
      if ! "$infer" "$field" -o "$out" "${mask_args[@]}" >"$out.log" 2>&1; then
        echo "experiment: deepqsm-infer failed (no default model yet?): skipping DeepQSM; see $out.log" >&2
        sed -n '1,3p' "$out.log" >&2
        return 1
      fi ;;
    *) "$deepqsm" invert "$method" "$field" -o "$out" "${mask_args[@]}" ;;
  esac
}

# score NAME METHOD PRED REF MASK(or "") FIGDIR PREFIX SECONDS TABLE_MD
score() {
  local name=$1 method=$2 pred=$3 ref=$4 mask=$5 figdir=$6 prefix=$7 secs=$8 md=$9
  local mask_args=()
  [ -n "$mask" ] && mask_args=(--mask "$mask")
  local js
  js=$("$deepqsm" eval "$pred" --ref "$ref" "${mask_args[@]}" --json \
        --diff-png "$figdir/${prefix}_diff.png" --hist-png "$figdir/${prefix}_hist.png")
  echo "$name $method $js"
  # One JSON object -> one markdown row (python3's json only; no other packages).
  python3 -c '
import json, sys
m = json.loads(sys.argv[1])
f = lambda k, p: "n/a" if m[k] is None else format(m[k], p)
print("| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (sys.argv[2], sys.argv[3],
      f("NRMSE", ".1f"), f("dNRMSE", ".1f"), f("HFEN", ".1f"), f("XSIM", ".3f"), f("SSIM", ".3f"),
      f("PSNR", ".2f"), f("CORR", ".3f"), f("ERR_MEAN", ".4f"), f("ERR_STD", ".4f"), sys.argv[4]))
' "$js" "$name" "$method" "$secs" >>"$md"
}

# run_method NAME METHOD FIELD REF MASK FIGDIR PREFIX WORKDIR TABLE_MD
run_method() {
  local name=$1 method=$2 field=$3 ref=$4 mask=$5 figdir=$6 prefix=$7 work=$8 md=$9
  local out=$work/${prefix}.nii.gz t0 t1
  t0=$(date +%s.%N)
  reconstruct "$method" "$field" "$mask" "$out" || return 0
  t1=$(date +%s.%N)
  score "$name" "$method" "$out" "$ref" "$mask" "$figdir" "$prefix" \
    "$(python3 -c "print('%.1f' % ($t1 - $t0))")" "$md"
}
