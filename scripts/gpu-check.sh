#!/usr/bin/env bash
# Runs every GPU test (ctest label gpu, or the test binary directly when the
# build folder was moved and ctest's recorded paths no longer exist), the
# op tests again under compute-sanitizer memcheck when it is installed, and
# the GPU benchmarks when present; then prints one summary table with the
# GPU, driver, CUDA runtime and cuDNN version, pass/fail and time per test.
#
#   scripts/gpu-check.sh [BUILD_DIR]     (default: build)
#
# Made to run on the GPU machine from a packed build folder: it needs only
# BUILD_DIR/deepqsm_gpu_tests (and ctest, python3, compute-sanitizer and
# nvidia-smi when they exist). Logs and JUnit files go to
# BUILD_DIR/gpu-check/ (or $GPU_CHECK_OUT). Exits non-zero when a test
# failed.
#
# GPU benchmarks: every BUILD_DIR/deepqsm_bench* executable whose `train
# --help` offers --device is run as `train --device gpu` and
# `infer --device gpu` with $GPU_BENCH_ARGS (default: --repeats 3).
set -uo pipefail

build=${1:-build}
bin="$build/deepqsm_gpu_tests"
out=${GPU_CHECK_OUT:-$build/gpu-check}
mkdir -p "$out"
if [ ! -x "$bin" ]; then
  echo "gpu-check: $bin not found; build the deepqsm_gpu_tests target first" >&2
  exit 2
fi

status=0
say() { printf '%s\n' "$*" | tee -a "$out/summary.txt"; }
: >"$out/summary.txt"

# ---- machine
gpu_line=$("$bin" "no test has this name" 2>/dev/null | grep -m1 '^GPU:' || true)
driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | head -1)
say "deepqsm gpu-check $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "${gpu_line:-GPU: none visible (tests will report skipped)}"
[ -n "$driver" ] && say "NVIDIA driver (nvidia-smi): $driver"
say ""

# ---- tests
junit="$out/gpu-tests.xml"
use_ctest=0
if command -v ctest >/dev/null 2>&1 && [ -f "$build/CTestTestfile.cmake" ]; then
  # catch_discover_tests records absolute paths; use ctest only when they
  # still point at this binary.
  if grep -rqs --include='*.cmake' -F "$(cd "$build" && pwd)/deepqsm_gpu_tests" "$build"; then
    use_ctest=1
  fi
fi
t0=$(date +%s)
if [ "$use_ctest" = 1 ]; then
  ctest --test-dir "$build" -L gpu --output-on-failure --timeout 1200 \
    --output-junit "$(cd "$out" && pwd)/gpu-tests.xml" >"$out/tests.log" 2>&1
  rc=$?
else
  "$bin" -r junit -o "$junit" --durations yes >"$out/tests.log" 2>&1
  rc=$?
fi
t1=$(date +%s)
[ "$rc" -ne 0 ] && [ "$rc" -ne 77 ] && status=1
say "GPU tests: $([ "$use_ctest" = 1 ] && echo "ctest -L gpu" || echo "$bin") exit $rc in $((t1 - t0)) s (log: $out/tests.log)"

summarise() {  # junit file -> table
  python3 - "$1" <<'EOF'
import sys, xml.etree.ElementTree as ET
try:
    root = ET.parse(sys.argv[1]).getroot()
except Exception as e:
    print(f"  (no JUnit results: {e})")
    sys.exit(0)
rows = []
for tc in root.iter("testcase"):
    name = tc.get("name", "?")
    t = float(tc.get("time", "0") or 0)
    if tc.find("failure") is not None or tc.find("error") is not None:
        res = "FAIL"
    elif tc.find("skipped") is not None:
        res = "skip"
    else:
        res = "pass"
    rows.append((res, t, name))
w = max([len(r[2]) for r in rows] + [4])
print(f"  {'test':<{w}}  result  seconds")
for res, t, name in rows:
    print(f"  {name:<{w}}  {res:<6}  {t:7.2f}")
n = len(rows)
print(f"  {sum(r[0]=='pass' for r in rows)} passed, {sum(r[0]=='FAIL' for r in rows)} failed, "
      f"{sum(r[0]=='skip' for r in rows)} skipped of {n}")
EOF
}
if command -v python3 >/dev/null 2>&1; then
  summarise "$junit" | tee -a "$out/summary.txt"
else
  grep -E 'test cases|assertions|FAILED' "$out/tests.log" | tee -a "$out/summary.txt"
fi
say ""

# ---- memory errors in the op tests ([ops] and the kernel tests; not the
# whole-U-Net and 50-step tests, which take minutes under memcheck), with
# cuDNN's first engine instead of timing every candidate (autotuning under
# memcheck could take the whole device slot). On
# gVisor machines compute-sanitizer refuses the device ("Device not
# supported"): reported as such, not as a memory error.
sanitizer=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null || true)
if [ -n "$sanitizer" ] && [ -n "$gpu_line" ]; then
  t0=$(date +%s)
  DEEPQSM_GPU_TEST_AUTOTUNE=0 timeout -k 10 "${GPU_CHECK_MEMCHECK_TIMEOUT:-600}" \
    "$sanitizer" --tool memcheck --target-processes all --error-exitcode 99 \
    "$bin" "[ops],cuda fill*,cuda relu*,cuda dropout*,cuda channel*,cuda max-pool*,cuda MSE*,cuda Adam*,device memory*" \
    >"$out/memcheck.log" 2>&1
  rc=$?
  if grep -q "Device not supported" "$out/memcheck.log"; then
    say "compute-sanitizer memcheck: not supported on this machine (gVisor?); see $out/memcheck.log"
    rc=0
  fi
  t1=$(date +%s)
  errors=$(grep -m1 -E 'ERROR SUMMARY: [0-9]+' "$out/memcheck.log" || echo "ERROR SUMMARY: ?")
  [ "$rc" -ne 0 ] && status=1
  say "compute-sanitizer memcheck (op tests): exit $rc, $errors, $((t1 - t0)) s (log: $out/memcheck.log)"
else
  say "compute-sanitizer memcheck: skipped (no compute-sanitizer or no GPU)"
fi
say ""

# ---- benchmarks
ran_bench=0
for b in "$build"/deepqsm_bench*; do
  if [ ! -f "$b" ] || [ ! -x "$b" ]; then continue; fi
  if ! "$b" train --help 2>/dev/null | grep -q -- '--device'; then
    say "benchmark $(basename "$b"): skipped (no --device option)"
    continue
  fi
  for mode in train infer; do
    log="$out/$(basename "$b")-$mode.log"
    # shellcheck disable=SC2086
    "$b" "$mode" --device gpu ${GPU_BENCH_ARGS:---repeats 3} >"$log" 2>&1
    rc=$?
    ran_bench=1
    [ "$rc" -ne 0 ] && status=1
    say "benchmark $(basename "$b") $mode (exit $rc):"
    grep -v '^{' "$log" | sed 's/^/  /' | tee -a "$out/summary.txt"
  done
done
[ "$ran_bench" = 0 ] && say "benchmarks: none run"

say ""
say "gpu-check: $([ "$status" = 0 ] && echo OK || echo FAILED) (summary: $out/summary.txt)"
exit "$status"
