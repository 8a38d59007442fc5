#!/usr/bin/env bash
# The build without CUDA: configures and builds DEEPQSM_GPU=off into
# $OFF_BUILD_DIR (default build-off) with the CUDA toolkit out of reach, checks
# that deepqsm and deepqsm-infer link no CUDA library, and runs the test
# suite there (the CPU tests; the GPU paths must say "built without CUDA").
# The toolkit is hidden with a private mount namespace (empty folders over
# /usr/local/cuda*) where unshare is allowed, and always by a PATH without
# it; either way nothing CUDA may appear in the build's commands.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${OFF_BUILD_DIR:-build-off}
start=$(date +%s)
clean_path=$(echo "$PATH" | tr ':' '\n' | grep -v -i cuda | paste -sd: -)
build_cmd="env -u CUDA_PATH -u CUDA_HOME -u CUDACXX PATH='$clean_path' DEEPQSM_GPU=off \
  BUILD_DIR='$build' bash scripts/build.sh"
hidden=(/usr/local/cuda*)
if [ -e "${hidden[0]}" ] && unshare -r -m true 2>/dev/null; then
  mounts=""
  for d in "${hidden[@]}"; do
    [ -d "$d" ] && mounts+="mount -t tmpfs none '$d' && "
  done
  echo "test-off: building with ${hidden[*]} hidden (mount namespace)"
  unshare -r -m sh -c "${mounts} if nvcc --version >/dev/null 2>&1; then echo 'test-off: nvcc still runs' >&2; exit 1; fi; $build_cmd"
else
  echo "test-off: building with CUDA off PATH (no mount namespace here)"
  sh -c "$build_cmd"
fi
if grep -lE '/usr/local/cuda|/cuda-[0-9]|bin/nvcc|-lcud|-lnccl|lib(cuda|cudart|cudnn|cufft|nccl)[._]' \
     "$build/CMakeCache.txt" \
     "$build/compile_commands.json" $(find "$build/CMakeFiles" -name link.txt) 2>/dev/null; then
  echo "test-off: the files above name a CUDA tool or library" >&2
  exit 1
fi
for bin in deepqsm deepqsm-infer; do
  if ldd "$build/$bin" | grep -iE 'libcuda|libcudart|libcudnn|libcufft|libnccl|libnv'; then
    echo "test-off: $build/$bin links the CUDA libraries above" >&2
    exit 1
  fi
done
echo "test-off: deepqsm and deepqsm-infer link no CUDA library"
built=$(date +%s)
ctest --test-dir "$build" --no-tests=error --output-on-failure -j"$(nproc)"
echo "test-off: build $((built - start)) s, ctest $(($(date +%s) - built)) s"
