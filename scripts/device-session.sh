#!/usr/bin/env bash
# One lent GPU session, spent in calls of the `run` tool, each one phase of
# this script, with what is worth keeping written to $OUT as it is produced
# (at most 8 files come back from a call, and only what is there when it
# ends). The budget is 15 minutes of device time for the whole task, the
# start of each machine (a minute or two) and its idle time included; a
# machine stays warm only 30 s after a call, so the second call must follow
# the first at once or pay for a fresh start.
#
# Here, before the session (no GPU needed):
#   CUDA_ARCHS=90 BUILD_DIR=build-sm90 bash scripts/build.sh
#   bash scripts/pack-device.sh build-sm90     # pack/deepqsm-device.tar.zst (+ pack/qsm2016)
# On the device (the `run` tool; carry pack/deepqsm-device.tar.zst and
# pack/qsm2016), back to back, timeout_s 560 each:
#   bash scripts/device-session.sh check        # GPU tests, memcheck, GPU benchmarks  (< 8.5 min)
#   COMPARE_LIMIT=240 bash scripts/device-session.sh compare
#                                               # the challenge brain through deepqsm-infer,
#                                               # then vs PyTorch in every precision
#                                               # (COMPARE_LIMIT seconds for the latter; 420 default)
# That is about 15 minutes with one start. With more device time (an
# earlier, 30-minute budget had room for it):
#   bash scripts/device-session.sh train 7 [precision]
#                                               # the paper recipe for 7 minutes, then export
#
# Each phase first unpacks the archive (again when a newer one was carried),
# points the packed binaries at the device's own driver, cuDNN, NCCL and
# cuFFT (the wheels of its PyTorch: nvidia/cudnn/lib, nvidia/nccl/lib,
# nvidia/cu13/lib), and stops with a plain message when a library is still
# missing or no GPU is visible, before spending minutes on skipped tests.
# `train` cannot resume across calls (a checkpoint with Adam moments does
# not fit through $OUT), so it is one call; it ends with `deepqsm export`:
# the weights come back as $OUT/model.h5.part-aa, -ab (15 MB pieces; `cat`
# them together here).
set -uo pipefail
cd "$(dirname "$0")/.."
phase=${1:?usage: device-session.sh check|compare|train MINUTES [PRECISION]}
out=${OUT:-pack/out}
mkdir -p "$out" pack
log() { printf '%s\n' "$*" | tee -a "$out/session.txt"; }

# ---- unpack (zstd, or pyarrow's zstd reader when the command is missing)
archive=pack/deepqsm-device.tar.zst
[ -f "$archive" ] || { log "device-session: $archive missing (carry it)"; exit 2; }
stamp=$(cksum <"$archive" | cut -d' ' -f1)
if [ ! -x pack/device/bin/deepqsm ] || [ "$(cat pack/device/.archive 2>/dev/null)" != "$stamp" ]; then
  rm -rf pack/device
  if command -v zstd >/dev/null 2>&1; then
    zstd -dc "$archive" | tar -xf - -C pack || { log "device-session: unpacking failed"; exit 2; }
  else
    python3 - "$archive" <<'PY' || { log "device-session: no zstd and pyarrow failed"; exit 2; }
import sys, tarfile, pyarrow as pa
with pa.input_stream(sys.argv[1], compression="zstd") as s, tarfile.open(fileobj=s, mode="r|") as t:
    t.extractall("pack")
PY
  fi
  echo "$stamp" >pack/device/.archive
fi

# ---- libraries: ours first, then the device's CUDA wheels, toolkit and driver
DEEPQSM_LIBS=$PWD/pack/device/lib
wheels=$(python3 - <<'PY' 2>/dev/null
import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)  # a namespace package: no __file__
except Exception:
    roots = []
dirs = []
for r in roots:
    for sub in ("cudnn", "nccl", "cu13", "cufft", "cublas", "cuda_runtime", "cuda_nvrtc", "nvjitlink"):
        d = os.path.join(r, sub, "lib")
        if os.path.isdir(d) and d not in dirs:
            dirs.append(d)
print(":".join(dirs))
PY
)
[ -n "$wheels" ] && DEEPQSM_LIBS+=":$wheels"
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib /usr/local/nvidia/lib64 \
  /usr/local/nvidia/lib /usr/lib/x86_64-linux-gnu; do
  [ -d "$d" ] && DEEPQSM_LIBS+=":$d"
done
[ -n "${LD_LIBRARY_PATH:-}" ] && DEEPQSM_LIBS+=":$LD_LIBRARY_PATH"
export DEEPQSM_LIBS
bin=$PWD/pack/device/bin
loader=$(ls pack/device/lib/ld-linux-x86-64.so.* | head -n 1)
log "device-session $phase: $(nvidia-smi --query-gpu=name,driver_version,memory.total \
  --format=csv,noheader 2>/dev/null | head -1)"

# ---- preflight: every library resolves, and the tests see a GPU
missing=$(for b in pack/device/real/*; do
  "$loader" --library-path "$DEEPQSM_LIBS" --list "$b" 2>&1 | grep 'not found'
done | sort -u)
if [ -n "$missing" ]; then
  log "device-session: libraries not found (DEEPQSM_LIBS=$DEEPQSM_LIBS):" "$missing"
  ldconfig -p 2>/dev/null | grep -E 'libcuda\.|cudnn|nccl|cufft' | head -20 | tee -a "$out/session.txt"
  exit 3
fi
gpu_line=$("$bin/deepqsm_gpu_tests" "no test has this name" 2>&1 | grep -m1 '^GPU:')
if [ -z "$gpu_line" ]; then
  log "device-session: the packed binaries see no GPU:"
  "$bin/deepqsm_gpu_tests" "no test has this name" 2>&1 | head -20 | tee -a "$out/session.txt"
  exit 3
fi
log "$gpu_line"

case "$phase" in
  check)
    # Tests, memcheck and the U-Net benchmarks (gpu-check.sh, which writes
    # its summary and logs into $out/check as it goes), then the generator
    # benchmark.
    logs=$out/check
    GPU_CHECK_OUT=$logs GPU_CHECK_MEMCHECK_TIMEOUT=150 timeout -k 10 420 \
      bash scripts/gpu-check.sh "$bin"
    rc=$?
    [ "$rc" = 124 ] && log "gpu-check: stopped at its 420 s limit"
    timeout -k 5 90 "$bin/deepqsm_bench_synth" 4 >"$logs/bench-synth.log" 2>&1
    log "deepqsm_bench_synth (exit $?):"
    sed 's/^/  /' "$logs/bench-synth.log" | tee -a "$out/session.txt"
    exit "$rc"
    ;;

  compare)
    # End to end on the 2016 challenge brain first (evaluation only; quick,
    # and what users run): the wall clock of the whole command, GPU and CPU,
    # and the metrics vs COSMOS.
    d=pack/qsm2016
    if [ -f "$d/phs_tissue.nii.gz" ]; then
      {
        for dev in gpu cpu; do
          t0=$(date +%s%N)
          timeout -k 5 120 "$bin/deepqsm-infer" "$d/phs_tissue.nii.gz" -o "pack/chi-$dev.nii.gz" \
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
      log "no pack/qsm2016: challenge inference skipped"
    fi
    # Each result lands in compare.jsonl as it is measured, so a run cut
    # off by the limit still brings back what it finished.
    COMPARE_JSON=$out/compare.jsonl timeout -k 10 "${COMPARE_LIMIT:-420}" bash benchmarks/compare.sh --gpu "$bin" 2>&1 |
      tee "$out/compare.txt"
    ;;

  train)
    minutes=${2:?train needs MINUTES}
    precision=${3:-bf16}
    run=pack/run
    cfg=pack/paper-device.json
    python3 - "$cfg" "$precision" <<'PY'
import json, sys
c = json.load(open("configs/deepqsm-paper.json"))
c["train"].update(precision=sys.argv[2], checkpoint_every=250, keep_checkpoints=2,
                  validate_every=1000, log_every=50)
json.dump(c, open(sys.argv[1], "w"), indent=2)
PY
    resume=()
    ls "$run"/checkpoint-*.h5 >/dev/null 2>&1 && resume=(--resume)
    # SIGTERM at the end of the budget: the step finishes and is
    # checkpointed; SIGKILL a minute later if it does not.
    timeout -k 60 -s TERM "$((minutes * 60))" "$bin/deepqsm" train --config "$cfg" --out "$run" \
      --device gpu "${resume[@]}" >"$out/train.log" 2>&1
    log "train: exit $? (124 or 143 = the time budget ended it)"
    tail -n 5 "$out/train.log" | tee -a "$out/session.txt"
    cp "$run/log.jsonl" "$out/log.jsonl" 2>/dev/null
    if "$bin/deepqsm" export "$run" -o pack/model.h5; then
      split -b 15M pack/model.h5 "$out/model.h5.part-"
      ls -l "$out" | tee -a "$out/session.txt"
    fi
    ;;

  *)
    log "device-session: unknown phase '$phase' (check, compare or train)"
    exit 2
    ;;
esac
