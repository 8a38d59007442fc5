#!/usr/bin/env bash
# Runs deepqsm and the same U-Net in PyTorch side by side on this machine,
# in one go, and prints both and their ratio (PyTorch time / deepqsm time;
# > 1 means deepqsm is faster).
#
#   benchmarks/compare.sh [build-dir] [threads]        CPU, wall clock
#   benchmarks/compare.sh --gpu [build-dir]            GPU, CUDA events
#
# On the GPU every deepqsm precision (fp32, tf32, bf16, fp16) and PyTorch's
# default (cuDNN convolutions in TF32, PyTorch's default on Ampere and
# later) and AMP bf16 are timed on the paper's training step (batch 40 of
# 64^3; AMP bf16 + torch.compile too) and on inference of a 160^3 and a
# 224x272x160 volume; the last lines compare each side's best.
# PyTorch comes from the python3 that has it (Debian's python3-torch on the
# CPU; the device's own on a GPU machine). Every JSON result is printed as
# it comes, and appended to $COMPARE_JSON when set.
set -euo pipefail
cd "$(dirname "$0")/.."
gpu=0
if [ "${1:-}" = "--gpu" ]; then
  gpu=1
  shift
fi
build=${1:-build}
threads=${2:-$(nproc)}
py=${PYTHON:-python3}
"$py" -c 'import torch' 2>/dev/null || py=/usr/bin/python3
export OMP_NUM_THREADS=$threads
# Rows land in $COMPARE_JSON (or a temporary file) as they are measured, so
# a run cut off by a time limit keeps what it finished.
if [ -n "${COMPARE_JSON:-}" ]; then
  results=$COMPARE_JSON
else
  results=$(mktemp)
  trap 'rm -f "$results"' EXIT
fi

# A failing configuration is reported on stderr and the others still run.
ours() {  # label, bench args -> one JSON line, tagged
  local line
  line=$("$build/deepqsm_bench_unet" "${@:2}" | tail -n 1) ||
    { echo "compare: deepqsm_bench_unet ${*:2} failed" >&2; return 0; }
  echo "{\"side\": \"deepqsm\", \"label\": \"$1\", \"result\": $line}" | tee -a "$results" >/dev/null
  echo "$line"
}
theirs() {  # label, pytorch args
  local line
  line=$("$py" benchmarks/pytorch_unet.py "${@:2}" | tail -n 1) ||
    { echo "compare: pytorch_unet.py ${*:2} failed" >&2; return 0; }
  echo "{\"side\": \"pytorch\", \"label\": \"$1\", \"result\": $line}" | tee -a "$results" >/dev/null
  echo "$line"
}

# Prints every row and, per task, the best of each side and their ratio.
report() {
  python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tasks = []
for r in rows:
    if r["label"] not in tasks:
        tasks.append(r["label"])
for task in tasks:
    mine = [r for r in rows if r["label"] == task]
    key = "ms_per_step" if "ms_per_step" in mine[0]["result"] else "ms"
    print(task)
    for r in mine:
        res = r["result"]
        extra = f"  {res['samples_per_s']:8.1f} samples/s" if "samples_per_s" in res else ""
        print(f"  {r['side']:<8} {res['backend']:<44} {res[key]:10.2f} ms{extra}"
              f"  peak {res.get('peak_mib', 0):7.0f} MiB")
    best = {}
    for side in ("deepqsm", "pytorch"):
        cands = [r["result"] for r in mine if r["side"] == side]
        if cands:
            best[side] = min(cands, key=lambda res: res[key])
    if len(best) == 2:
        a, b = best["deepqsm"], best["pytorch"]
        print(f"  best: deepqsm {a[key]:.2f} ms ({a['backend']}) vs PyTorch {b[key]:.2f} ms "
              f"({b['backend']}): ratio {b[key] / a[key]:.2f}x")
PY
}

if [ "$gpu" = 1 ]; then
  echo "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1)"
  train="train batch 40 of 64^3 (depth 5, base 16)"
  for p in fp32 tf32 bf16 fp16; do
    ours "$train" train --device gpu --precision "$p" --batch 40 --patch 64 --repeats 10
  done
  theirs "$train" train --device cuda --batch 40 --patch 64 --repeats 10
  theirs "$train" train --device cuda --amp --batch 40 --patch 64 --repeats 10
  theirs "$train" train --device cuda --amp --compile --batch 40 --patch 64 --repeats 10
  for size in 160,160,160 224,272,160; do
    task="infer ${size//,/x} (depth 5, base 16)"
    for p in fp32 tf32 bf16 fp16; do
      ours "$task" infer --device gpu --precision "$p" --size "$size" --repeats 20
    done
    theirs "$task" infer --device cuda --size ${size//,/ } --repeats 20
    theirs "$task" infer --device cuda --amp --size ${size//,/ } --repeats 20
    # No torch.compile here: a cold compile per volume size costs minutes
    # of a 10-minute device call (it is timed on the training step above).
  done
else
  echo "CPU, $threads threads ($(lscpu | sed -n 's/^Model name: *//p'))"
  ours "infer 160^3 (depth 5, base 16)" infer --size 160,160,160 --repeats 3
  theirs "infer 160^3 (depth 5, base 16)" infer --size 160 160 160 --repeats 3 --threads "$threads"
  # The whole-brain grid of the GPU target, on the CPU too (peak memory ~6 GiB each side).
  ours "infer 224x272x160 (depth 5, base 16)" infer --size 224,272,160 --repeats 3
  theirs "infer 224x272x160 (depth 5, base 16)" infer --size 224 272 160 --repeats 3 \
    --threads "$threads"
  ours "train batch 2 of 64^3 (depth 5, base 16)" train --batch 2 --patch 64 --repeats 3
  theirs "train batch 2 of 64^3 (depth 5, base 16)" train --batch 2 --patch 64 --repeats 3 \
    --threads "$threads"
  ours "train batch 4 of 32^3 (depth 3, base 8)" train --depth 3 --base 8 --batch 4 --patch 32 \
    --repeats 5
  theirs "train batch 4 of 32^3 (depth 3, base 8)" train --depth 3 --base 8 --batch 4 --patch 32 \
    --repeats 5 --threads "$threads"
fi
report
