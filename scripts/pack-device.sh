#!/usr/bin/env bash
# Packs the built binaries, with every shared library they need that a bare
# GPU machine lacks, into pack/deepqsm-device.tar.zst (under 64 MiB) for the
# lent device machine, which has the NVIDIA driver, a CUDA toolkit and
# PyTorch (cuDNN, NCCL and cuFFT in its Python packages) but none of our
# Debian libraries.
#
#   CUDA_ARCHS=90 BUILD_DIR=build-sm90 bash scripts/build.sh
#   bash scripts/pack-device.sh build-sm90
#
# Our glibc travels too (the device's may be older than Debian 12's) and the
# binaries run through the packed loader; the driver, cuDNN, NCCL and cuFFT
# stay the device's. On the device (carry pack/deepqsm-device.tar.zst):
#
#   zstd -dc pack/deepqsm-device.tar.zst | tar -xf - -C pack
#   # the CUDA 13 wheels are namespace packages (no __file__): list nvidia.__path__
#   nv=$(python3 -c 'import nvidia;print(nvidia.__path__[0])')
#   export DEEPQSM_LIBS=pack/device/lib:$nv/cudnn/lib:$nv/nccl/lib:$nv/cu13/lib:/usr/local/nvidia/lib64
#   bash scripts/gpu-check.sh pack/device/bin
#
# scripts/device-session.sh does all of this, in three calls' worth of phases.
#
# pack/device/bin holds wrappers that start each binary through the packed
# loader with DEEPQSM_LIBS as its library path (which replaces
# LD_LIBRARY_PATH, so the driver's folder must be in it). /proc/self/exe is
# then the loader, and its command line carries the binary, so `train
# --gpus N` re-executes correctly; deepqsm-infer finds pack/device/models.
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
out=pack/device
rm -rf "$out" pack/deepqsm-device.tar.zst
mkdir -p "$out/bin" "$out/real" "$out/lib"

bins=(deepqsm deepqsm-infer deepqsm_tests deepqsm_gpu_tests deepqsm_bench_unet deepqsm_bench_synth)
for b in "${bins[@]}"; do
  [ -x "$build/$b" ] || { echo "pack-device: $build/$b not built" >&2; exit 1; }
  cp "$build/$b" "$out/real/"
done

# Libraries the device provides itself (driver, cuDNN, NCCL, cuFFT: the
# last three are large and must match the device's driver anyway).
skip='^(libcuda\.|libcudnn|libnccl|libcufft|linux-vdso)'
for b in "${bins[@]}"; do
  ldd "$build/$b" | awk '/=>/ {print $1, $3} /ld-linux/ && !/=>/ {print $1, $1}'
done | sort -u | while read -r name path; do
  [[ "$name" =~ $skip ]] && continue
  [ -f "$path" ] && cp -L "$path" "$out/lib/$(basename "$name")"
done
loader=$(basename "$(ls "$out"/lib/ld-linux-x86-64.so.* | head -n 1)")

for b in "${bins[@]}"; do
  cat >"$out/bin/$b" <<SH
#!/usr/bin/env bash
here=\$(cd "\$(dirname "\$0")/.." && pwd)
exec "\$here/lib/$loader" --library-path "\${DEEPQSM_LIBS:-\$here/lib}" "\$here/real/$b" "\$@"
SH
  chmod +x "$out/bin/$b"
done
cp -r models "$out/"
# The 2016 challenge brain, for GPU inference and evaluation on the device
# (scripts/device-session.sh compare); it is not part of the archive.
if [ -d ../shared/data/qsm2016 ]; then
  rm -rf pack/qsm2016
  cp -r ../shared/data/qsm2016 pack/qsm2016
  chmod -R u+w pack/qsm2016
fi
tar -C pack -cf - device | zstd -q -19 -T0 -o pack/deepqsm-device.tar.zst
echo "pack-device: pack/deepqsm-device.tar.zst ($(du -h pack/deepqsm-device.tar.zst | cut -f1)," \
  "$(ls "$out/lib" | wc -l) libraries, binaries for sm_$(grep '^CMAKE_CUDA_ARCHITECTURES:' "$build/CMakeCache.txt" | cut -d= -f2))"
