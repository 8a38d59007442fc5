#!/usr/bin/env bash
# One lent GPU session (about 30 minutes of device time, 10 minutes per
# call) spent in three calls, each one phase of this script, with what is
# worth keeping left in $OUT (at most 8 files come back from a call).
#
# Here, before the session (no GPU needed):
#   CUDA_ARCHS=90 BUILD_DIR=build-sm90 bash scripts/build.sh
#   bash scripts/pack-device.sh build-sm90     # pack/deepqsm-device.tar.zst (+ pack/qsm2016)
# On the device (the `run` tool; carry pack/deepqsm-device.tar.zst and
# pack/qsm2016):
#   bash scripts/device-session.sh check        # GPU tests, memcheck, GPU benchmarks  (~5 min)
#   bash scripts/device-session.sh compare      # vs PyTorch in every precision; the
#                                               # challenge brain through deepqsm-infer (~6 min)
#   bash scripts/device-session.sh train 8 [precision]
#                                               # the paper recipe for 8 minutes, resuming
#                                               # pack/run when a warm machine still has it
#
# Each phase unpacks the archive when pack/device is missing (a warm
# machine keeps it between calls) and points the packed binaries at the
# device's own cuDNN, NCCL and cuFFT (its PyTorch's Python packages).
# `train` ends with `deepqsm export`: the weights come back as
# $OUT/model.h5.part-aa, -ab (15 MB pieces; `cat` them together here).
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:?usage: device-session.sh check|compare|train MINUTES [PRECISION]}
out=${OUT:-pack/out}
mkdir -p "$out" pack

if [ ! -x pack/device/bin/deepqsm ]; then
  [ -f pack/deepqsm-device.tar.zst ] ||
    { echo "device-session: pack/deepqsm-device.tar.zst missing (carry it)" >&2; exit 2; }
  tar --zstd -xf pack/deepqsm-device.tar.zst -C pack || exit 2
fi
pylib() { python3 -c "import nvidia.$1,os;print(os.path.dirname(nvidia.$1.__file__))" 2>/dev/null; }
DEEPQSM_LIBS=$PWD/pack/device/lib
for m in cudnn nccl cufft; do
  d=$(pylib "$m") && DEEPQSM_LIBS+=":$d/lib"
done
export DEEPQSM_LIBS+=":/usr/local/cuda/lib64"
bin=$PWD/pack/device/bin
echo "device-session $phase: $(nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader 2>/dev/null | head -1)"

case "$phase" in
  check)
    # Tests, memcheck and the U-Net benchmarks (gpu-check.sh), then the
    # generator benchmark; the logs come back as one archive.
    logs=pack/check-logs
    rm -rf "$logs"
    GPU_CHECK_OUT=$logs bash scripts/gpu-check.sh "$bin"
    rc=$?
    "$bin/deepqsm_bench_synth" 4 >"$logs/bench-synth.log" 2>&1
    echo "deepqsm_bench_synth (exit $?):" | tee -a "$logs/summary.txt"
    sed 's/^/  /' "$logs/bench-synth.log" | tee -a "$logs/summary.txt"
    cp "$logs/summary.txt" "$out/check-summary.txt"
    tar -C pack -cf - check-logs | zstd -q -T0 -o "$out/check-logs.tar.zst"
    exit "$rc"
    ;;

  compare)
    COMPARE_JSON=$out/compare.jsonl bash benchmarks/compare.sh --gpu "$bin" |
      tee "$out/compare.txt"
    # End to end on the 2016 challenge brain (evaluation only): the wall
    # clock of the whole command, GPU and CPU, and the metrics vs COSMOS.
    d=pack/qsm2016
    if [ -f "$d/phs_tissue.nii.gz" ]; then
      {
        for dev in gpu cpu; do
          t0=$(date +%s%N)
          "$bin/deepqsm-infer" "$d/phs_tissue.nii.gz" -o "pack/chi-$dev.nii.gz" \
            --mask "$d/msk.nii.gz" --device "$dev"
          rc=$?
          t1=$(date +%s%N)
          echo "deepqsm-infer --device $dev: exit $rc, $(((t1 - t0) / 1000000)) ms wall clock" \
            "($(nproc) CPU cores on the device)"
        done
        "$bin/deepqsm" eval "pack/chi-gpu.nii.gz" --ref "$d/chi_cosmos.nii.gz" --mask "$d/msk.nii.gz"
        echo "GPU vs CPU output:"
        "$bin/deepqsm" eval "pack/chi-gpu.nii.gz" --ref "pack/chi-cpu.nii.gz" --mask "$d/msk.nii.gz"
      } 2>&1 | tee "$out/infer-challenge.txt"
    else
      echo "no pack/qsm2016: challenge inference skipped" | tee "$out/infer-challenge.txt"
    fi
    ;;

  train)
    minutes=${2:?train needs MINUTES}
    precision=${3:-bf16}
    run=pack/run
    cfg=pack/paper-device.json
    # The paper recipe, checkpointing often enough that a call's end loses
    # little; the same file on every call so --resume accepts it.
    python3 - "$cfg" "$precision" <<'PY'
import json, sys
c = json.load(open("configs/deepqsm-paper.json"))
c["train"].update(precision=sys.argv[2], checkpoint_every=250, keep_checkpoints=2,
                  validate_every=1000, log_every=50)
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
    resume=()
    ls "$run"/checkpoint-*.h5 >/dev/null 2>&1 && resume=(--resume)
    # SIGTERM at the end of the budget; the newest checkpoint survives it.
    timeout -s TERM "$((minutes * 60))" "$bin/deepqsm" train --config "$cfg" --out "$run" \
      --device gpu "${resume[@]}" 2>&1 | tee -a pack/train.log | tail -n 200 >"$out/train-tail.log"
    echo "train: exit ${PIPESTATUS[0]} (124 = the time budget ended it)"
    cp "$run/log.jsonl" "$out/log.jsonl" 2>/dev/null
    if "$bin/deepqsm" export "$run" -o pack/model.h5; then
      split -b 15M pack/model.h5 "$out/model.h5.part-"
      ls -l "$out"
    fi
    ;;

  *)
    echo "device-session: unknown phase '$phase' (check, compare or train)" >&2
    exit 2
    ;;
esac
