#!/usr/bin/env bash
# deepqsm against CUDA 12.x, the last CUDA that targets the V100 (sm_70).
#
#   scripts/build-cuda12.sh                 full build with a CUDA 12.x toolkit
#   scripts/build-cuda12.sh --check         what CI can check without one
#
# Full build: nvcc 12.x from $CUDA12_HOME (a cluster's `module load cuda/12.x`
# sets it, or NVIDIA's runfile in /usr/local/cuda-12.x), every source built
# for $CUDA_ARCHS (default "70;80;90") into build-cuda12/ and linked. cuDNN 9
# and NCCL for CUDA 12 come from $CUDNN_PATH / $NCCL_HOME or the toolkit,
# else from PyPI (nvidia-cudnn-cu12, nvidia-nccl-cu12: ~900 MB of wheels)
# into $DEEPQSM_CUDA12 (default ~/.cache/deepqsm/cuda12), outside the
# repository.
#
# --check: PyPI has no CUDA 12 nvcc (nvidia-cuda-nvcc-cu12 12.1 to 12.9 ship
# only ptxas, libdevice and the crt headers; Debian 12 packages CUDA 11.8), so
# CI checks what it can without one, in two parts:
#  1. every host source that includes a CUDA header compiled (g++
#     -fsyntax-only, the main build's own flags from
#     build/compile_commands.json) against CUDA 12.9's runtime and CCCL
#     headers (nvidia-cuda-runtime-cu12, nvidia-cuda-cccl-cu12: 3.8 MB of
#     wheels) instead of CUDA 13's, with the cuDNN 9, NCCL and cuFFT headers of
#     /usr/local/cuda (version-independent C APIs; cuFFT's is the same in 12
#     and 13): catches an API that CUDA 13 added or changed;
#  2. every kernel source (*.cu) compiled for sm_70 by Debian's clang-16 as
#     the CUDA compiler, against those CUDA 12.9 headers, with CUDA 12.9's
#     libdevice and its ptxas assembling the V100 machine code
#     (nvidia-cuda-nvcc-cu12: 40 MB): catches a kernel that uses what sm_70
#     lacks (bf16 arithmetic, newer atomics, ...) or that ptxas 12 refuses.
#     Both the device side (PTX -> ptxas -> sm_70 cubin) and the host side
#     are compiled. What it cannot prove: nvcc 12's own front end and code
#     generation; a cluster's `scripts/build-cuda12.sh` with a real nvcc 12
#     is that.
# All of it goes into $DEEPQSM_CUDA12 (default ~/.cache/deepqsm/cuda12).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=${DEEPQSM_CUDA12:-$HOME/.cache/deepqsm/cuda12}
pyenv=${DEEPQSM_PYENV:-$HOME/.cache/deepqsm/pyenv}

# wheels DIR PKG==VER...: downloads and unpacks the wheels into DIR (once).
wheels() {
  local dir=$1
  shift
  if [ -e "$dir/.done" ] && [ "$(cat "$dir/.done")" = "$*" ]; then return 0; fi
  local pip=(python3 -m pip)
  [ -x "$pyenv/bin/pip" ] && pip=("$pyenv/bin/pip")
  "${pip[@]}" --version >/dev/null 2>&1 ||
    { echo "build-cuda12: no pip (scripts/setup.sh makes $pyenv) to fetch $*" >&2; return 1; }
  rm -rf "$dir" && mkdir -p "$dir/whl"
  "${pip[@]}" download -q --disable-pip-version-check --no-deps -d "$dir/whl" "$@" || return 1
  echo "build-cuda12: downloaded $(du -sh "$dir/whl" | cut -f1) of wheels ($*)"
  for w in "$dir"/whl/*.whl; do python3 -m zipfile -e "$w" "$dir" || return 1; done
  rm -rf "$dir/whl"
  echo "$*" > "$dir/.done"
}

if [ "${1:-}" = "--check" ]; then
  build=${BUILD_DIR:-build}
  [ -f "$build/compile_commands.json" ] ||
    { echo "build-cuda12: $build/compile_commands.json missing; run scripts/build.sh first" >&2; exit 1; }
  # Only a CUDA build with the toolkit's cuDNN, NCCL and cuFFT headers has
  # something to check (an emu or off build includes the emulator's headers).
  mode=$(sed -n 's/^DEEPQSM_GPU:[A-Z]*=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
  cuda13=${CUDA_HOME:-/usr/local/cuda}/include
  if [ "${mode:-cuda}" != cuda ] || [ ! -e "$cuda13/cufft.h" ] || [ ! -e "$cuda13/cudnn.h" ]; then
    echo "build-cuda12: SKIPPED the CUDA 12 checks: $build is a DEEPQSM_GPU=${mode:-cuda} build" \
         "or $cuda13 lacks the CUDA toolkit's cuFFT/cuDNN headers" >&2
    exit 0
  fi
  hdr=$cache/headers
  if ! wheels "$hdr" nvidia-cuda-runtime-cu12==12.9.79 nvidia-cuda-cccl-cu12==12.9.27; then
    echo "build-cuda12: SKIPPED the CUDA 12 header check: the CUDA 12 headers could not be fetched" >&2
    exit 0
  fi
  # One include folder: CUDA 12.9's runtime and CCCL, plus only the cuDNN,
  # NCCL and cuFFT headers of the installed toolkit (none of its runtime).
  inc=$hdr/include
  rm -rf "$inc" && mkdir -p "$inc"
  cp -r "$hdr"/nvidia/cuda_runtime/include/. "$hdr"/nvidia/cuda_cccl/include/. "$inc"/
  for h in "$cuda13"/cudnn*.h "$cuda13"/nccl*.h "$cuda13"/cufft*.h; do ln -sf "$h" "$inc"/; done
  grep -q 'define CUDART_VERSION  *12' "$inc/cuda_runtime_api.h" ||
    { echo "build-cuda12: $inc holds no CUDA 12 runtime header" >&2; exit 1; }
  python3 - "$build/compile_commands.json" "$inc" "$cuda13" <<'PY'
import concurrent.futures, json, os, re, shlex, subprocess, sys
db, inc, cuda13 = sys.argv[1:]
cuda_hdr = re.compile(r'#\s*include\s*[<"](cuda[_/.]|cufft|cudnn|nccl|synth/synth_gpu)')
jobs = []
for e in json.load(open(db)):
    src = e["file"]
    if not src.endswith(".cpp"):
        continue
    text = open(src, errors="replace").read()
    if not cuda_hdr.search(text):
        continue
    args = shlex.split(e["command"])
    out, i = [], 0
    while i < len(args):  # the same flags, CUDA 13's include folder swapped for CUDA 12's
        a = args[i]
        if a == "-o":
            i += 2
            continue
        if a in ("-isystem", "-I") and os.path.realpath(args[i + 1]) == os.path.realpath(cuda13):
            out += [a, inc]
            i += 2
            continue
        out.append(a)
        i += 1
    jobs.append((src, out + ["-fsyntax-only"], e["directory"]))


def check(job):
    src, cmd, cwd = job
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    return src, r.returncode, r.stderr


swapped = sum(1 for _, cmd, _ in jobs if inc in cmd)
if swapped == 0:
    print("build-cuda12: no compile command used the toolkit's include folder " + cuda13 +
          "; nothing was checked against CUDA 12's headers")
    sys.exit(1)
checked = failed = 0
with concurrent.futures.ThreadPoolExecutor(os.cpu_count() or 2) as pool:
    for src, rc, err in pool.map(check, jobs):
        checked += 1
        if rc != 0:
            failed += 1
            print(f"build-cuda12: {os.path.relpath(src)} does not compile against CUDA 12:\n{err}")
print(f"build-cuda12: {checked} host sources that include CUDA headers checked against CUDA 12.9's "
      f"runtime headers, {failed} failed")
sys.exit(1 if failed or checked == 0 else 0)
PY
  # 2. The kernels for sm_70, compiled by clang-16 with CUDA 12.9's headers,
  # libdevice and ptxas (a toolkit folder as clang's --cuda-path expects it).
  clang=$(command -v clang++-16 || true)
  if [ -z "$clang" ]; then
    echo "build-cuda12: no clang++-16 (scripts/setup.sh installs it) to compile the kernels for sm_70" >&2
    [ "${CI:-}" = "true" ] && exit 1
    echo "build-cuda12: SKIPPED the sm_70 kernel compile" >&2
    exit 0
  fi
  nvcc12=$cache/nvcc
  wheels "$nvcc12" nvidia-cuda-nvcc-cu12==12.9.86 ||
    { echo "build-cuda12: could not fetch nvidia-cuda-nvcc-cu12 (ptxas, libdevice)" >&2; exit 1; }
  tk=$cache/toolkit
  rm -rf "$tk" && mkdir -p "$tk/bin"
  cp "$nvcc12/nvidia/cuda_nvcc/bin/ptxas" "$tk/bin/" && chmod +x "$tk/bin/ptxas"
  cp -r "$nvcc12/nvidia/cuda_nvcc/nvvm" "$tk/"
  cp -r "$inc" "$tk/include" && cp -r "$nvcc12/nvidia/cuda_nvcc/include/." "$tk/include/"
  # (The version into a variable first: `| grep -q` under pipefail fails
  # when grep's early exit gives ptxas a SIGPIPE.)
  ptxas_version=$("$tk/bin/ptxas" --version)
  ptxas_release=
  [[ "$ptxas_version" =~ release\ ([0-9.]+), ]] && ptxas_release=${BASH_REMATCH[1]}
  [[ "$ptxas_release" == 12.* ]] ||
    { echo "build-cuda12: $tk/bin/ptxas is not CUDA 12's" >&2; exit 1; }
  mapfile -t kernels < <(git ls-files '*.cu')
  [ ${#kernels[@]} -gt 0 ] || { echo "build-cuda12: no .cu sources found" >&2; exit 1; }
  failed=0
  out=$(mktemp -d)
  trap 'rm -rf "$out"' EXIT
  for src in "${kernels[@]}"; do
    for side in --cuda-device-only --cuda-host-only; do
      if ! "$clang" -x cuda --cuda-path="$tk" --cuda-gpu-arch=sm_70 "$side" -std=c++17 -O2 \
          -Wno-unknown-cuda-version -I. -I/usr/include/hdf5/serial -DNDEBUG \
          -c "$src" -o "$out/k.o"; then
        echo "build-cuda12: $src ($side) does not compile for sm_70 with CUDA 12.9" >&2
        failed=$((failed + 1))
      fi
    done
  done
  echo "build-cuda12: ${#kernels[@]} kernel sources compiled for sm_70 (clang-16, CUDA 12.9" \
    "headers, libdevice and ptxas $ptxas_release), $failed failed"
  [ "$failed" -eq 0 ]
  exit 0
fi

# ------------------------------------------------------------- full build
nvcc=""
for c in ${CUDA12_HOME:+"$CUDA12_HOME/bin/nvcc"} $(command -v nvcc || true) /usr/local/cuda-12*/bin/nvcc; do
  if [ -x "$c" ] && [[ "$("$c" --version)" == *"release 12."* ]]; then nvcc=$c; break; fi
done
if [ -z "$nvcc" ]; then
  echo "build-cuda12: no CUDA 12.x nvcc (set CUDA12_HOME; PyPI and Debian 12 have none)." >&2
  echo "build-cuda12: without one, '$0 --check' checks the sources against CUDA 12's headers and ptxas." >&2
  exit 1
fi
root=$(cd "$(dirname "$nvcc")/.." && pwd)
echo "build-cuda12: $("$nvcc" --version | grep release) in $root"
need=()
[ -z "${CUDNN_PATH:-}" ] && [ ! -e "$root/include/cudnn.h" ] && need+=(nvidia-cudnn-cu12==9.10.2.21)
[ -z "${NCCL_HOME:-}" ] && [ ! -e "$root/include/nccl.h" ] && need+=(nvidia-nccl-cu12==2.27.3)
if [ ${#need[@]} -gt 0 ]; then
  libs=$cache/libs-$(echo "${need[*]}" | tr -c 'a-z0-9.\n' '-')
  wheels "$libs" "${need[@]}" || { echo "build-cuda12: could not fetch ${need[*]}" >&2; exit 1; }
  # The wheels hold versioned libraries only; the linker wants the plain names.
  if [ -d "$libs/nvidia/cudnn" ]; then
    ln -sf libcudnn.so.9 "$libs/nvidia/cudnn/lib/libcudnn.so"
    export CUDNN_PATH=$libs/nvidia/cudnn
  fi
  if [ -d "$libs/nvidia/nccl" ]; then
    ln -sf libnccl.so.2 "$libs/nvidia/nccl/lib/libnccl.so"
    export NCCL_HOME=$libs/nvidia/nccl
  fi
fi
build=${BUILD_DIR:-build-cuda12}
args=(-S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_COMPILER="$nvcc"
      -DCUDAToolkit_ROOT="$root" "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHS:-70;80;90}")
[ "${CI:-}" = "true" ] && args+=(-DDEEPQSM_WERROR=ON)
cmake "${args[@]}" >/dev/null
cmake --build "$build" -j"$(nproc)"
echo "build-cuda12: built for sm_${CUDA_ARCHS:-70;80;90} into $build"
