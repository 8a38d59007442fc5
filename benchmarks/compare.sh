#!/usr/bin/env bash
# Runs deepqsm and the same U-Net in PyTorch side by side on this machine,
# in one go, and prints both and their ratio (PyTorch time / deepqsm time;
# > 1 means deepqsm is faster).
#   benchmarks/compare.sh [build-dir] [threads]
# PyTorch comes from the python3 that has it (Debian's python3-torch works).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
threads=${2:-$(nproc)}
py=${PYTHON:-python3}
"$py" -c 'import torch' 2>/dev/null || py=/usr/bin/python3
export OMP_NUM_THREADS=$threads

run() {  # name, deepqsm args, pytorch args
  local ours theirs
  ours=$("$build/deepqsm_bench_unet" $2 | tail -n 1)
  theirs=$("$py" benchmarks/pytorch_unet.py $3 --threads "$threads" | tail -n 1)
  python3 - "$1" "$ours" "$theirs" <<'PY'
import json, sys
name, a, b = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
key = "ms_per_step" if "ms_per_step" in a else "ms"
print(f"{name:<34} deepqsm {a[key]:9.1f} ms   {b['backend']:<28} {b[key]:9.1f} ms   "
      f"ratio {b[key] / a[key]:5.2f}x")
PY
}

echo "CPU, $threads threads ($(lscpu | sed -n 's/^Model name: *//p'))"
run "infer 160^3 (depth 5, base 16)" "infer --size 160,160,160 --repeats 3" \
    "infer --size 160 160 160 --repeats 3"
run "train batch 2 of 64^3 (depth 5/16)" "train --batch 2 --patch 64 --repeats 3" \
    "train --batch 2 --patch 64 --repeats 3"
run "train batch 4 of 32^3 (depth 3/8)" "train --depth 3 --base 8 --batch 4 --patch 32 --repeats 5" \
    "train --depth 3 --base 8 --batch 4 --patch 32 --repeats 5"
