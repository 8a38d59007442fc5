#!/usr/bin/env bash
# The emu build's coverage check (ctest emu_kernels_launched): every
# __global__ kernel declared in the CUDA sources must have been launched at
# least once by the emulated GPU tests, whose launches the emulator appends to
# LOG (DEEPQSM_EMU_LAUNCH_LOG). The list of kernels is read from the source.
set -euo pipefail
log=$(realpath -m "${1:?usage: check-emu-launches.sh LAUNCH_LOG}")
cd "$(dirname "$0")/.."
if [ ! -s "$log" ]; then
  echo "check-emu-launches: $log is missing or empty: no emulated test recorded a launch" >&2
  exit 1
fi
# Declarations may span lines (template <...> / __launch_bounds__(...) / name).
kernels=$(find cuda synth -name '*.cu' -print0 | xargs -0 cat | tr '\n' ' ' |
            grep -oE '__global__[[:space:]]+void[[:space:]]+(__launch_bounds__\([^)]*\)[[:space:]]*)?[A-Za-z_][A-Za-z0-9_]*' |
            awk '{print $NF}' | sort -u)
total=$(echo "$kernels" | wc -l)
missing=$(comm -23 <(echo "$kernels") <(sort -u "$log"))
if [ -n "$missing" ]; then
  echo "check-emu-launches: $(echo "$missing" | wc -l) of $total kernels were never launched by the emu tests:" >&2
  echo "$missing" >&2
  exit 1
fi
echo "check-emu-launches: all $total kernels of the source were launched"
