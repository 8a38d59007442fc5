#!/usr/bin/env bash
# The layering of docs/architecture.md, checked on the includes (a ctest,
# "layout"): each rule names a folder and the includes it may not have.
# Exits 1, listing every offending line, when one is broken.
set -euo pipefail
cd "$(dirname "$0")/.."
status=0

# The project's own headers are included by their path from the root
# ("core/qsm/dipole.h"), never relatively, so the rules below see them all.
includes() {  # includes [-r] FOLDER: every #include line of the sources there
  local depth=(-maxdepth 1)
  if [ "$1" = "-r" ]; then depth=(); shift; fi
  find "$1" ${depth[@]+"${depth[@]}"} -type f \( -name '*.h' -o -name '*.cpp' -o -name '*.cu' \) \
    -exec grep -HnE '^[[:space:]]*#[[:space:]]*include' {} + || true
}

# forbid [-r] FOLDER PATTERN WHY: no source directly in FOLDER (or anywhere
# below it, with -r) includes a header whose name starts with PATTERN.
forbid() {
  local recurse=()
  if [ "$1" = "-r" ]; then recurse=(-r); shift; fi
  local folder=$1 pattern=$2 why=$3 hits
  if [ ! -d "$folder" ]; then
    echo "layout: no folder $folder (update scripts/check-layout.sh with the layout)" >&2
    status=1
    return
  fi
  hits=$(includes ${recurse[@]+"${recurse[@]}"} "$folder" |
           grep -E "#[[:space:]]*include[[:space:]]*[<\"]($pattern)" || true)
  if [ -n "$hits" ]; then
    echo "layout: $folder: $why:" >&2
    echo "$hits" >&2
    status=1
  fi
}

cuda_headers='cuda[_./]|cu(fft|dnn|blas|rand|sparse|solver)|nccl|nvrtc|thrust/|cub/|(driver|vector)_types\.h'

# Project headers, layer by layer.
forbid core 'core/(nn|qsm|io)/|cuda/|synth/|train/|infer/' "the floor includes no room and no layer above it"
forbid -r core/io 'core/(nn|qsm)/|cuda/|synth/|train/|infer/' "file formats depend on the floor only"
forbid -r core/nn 'core/qsm/|cuda/|synth/|train/|infer/' "the network engine knows no physics"
forbid -r core/qsm 'cuda/|synth/|train/|infer/' "the physics runs on the CPU, below the generator and the commands"
forbid -r core/onnx 'core/qsm/|cuda/|synth/|train/|infer/' "ONNX export/import sits on the network engine, below the commands"
forbid -r core/nn 'core/onnx/' "the network engine knows nothing of ONNX"
forbid -r core/qsm 'core/onnx/' "the physics runs no ONNX graph"
forbid -r core "$cuda_headers" "core/ never includes a CUDA header"
forbid cuda 'cuda/(nn|qsm)/|synth/|train/|infer/' "cuda/'s own files (memory, devices, launch) sit below its rooms"
forbid -r cuda/emu 'core/|cuda/(nn|qsm|check|device|memory|launch)|synth/|train/|infer/' "the CUDA emulator stands in for the toolkit and knows no project code"
forbid -r cuda/nn 'cuda/qsm/|synth/|train/|infer/' "the CUDA backend knows no GPU physics"
forbid -r cuda/qsm 'synth/|train/|infer/' "the GPU physics sits below the generator and the commands"
forbid -r synth 'train/|infer/' "the generator sits below the commands"
forbid train 'train/cli/|infer/' "the trainer knows none of the deepqsm verbs"
forbid -r infer 'train/|synth/|mpi\.h|nccl\.h' "deepqsm-infer links no trainer, generator, MPI or NCCL"

# Third-party libraries stay in the room that wraps them.
forbid -r core/io 'fftw3|dnnl|oneapi/' "FFTW is core/qsm's, oneDNN core/nn/cpu's"
forbid -r core/qsm 'dnnl|oneapi/|png\.h|nifti|znzlib|zlib\.h|hdf5' "oneDNN is core/nn/cpu's; file formats are core/io's"
forbid core/nn 'fftw3|dnnl|oneapi/|png\.h|nifti|znzlib|zlib\.h|hdf5' "FFTW is core/qsm's, oneDNN core/nn/cpu's, file formats core/io's"
forbid -r core/nn/cpu 'fftw3|png\.h|nifti|znzlib|zlib\.h|hdf5' "FFTW is core/qsm's, file formats core/io's"
forbid core 'fftw3|dnnl|oneapi/|png\.h|nifti|znzlib|zlib\.h|hdf5' "the floor wraps no library"
forbid -r core 'mpi\.h|nccl' "MPI and NCCL are the trainer's (train/comm_*.cpp)"
forbid -r core/nn 'onnx/|google/protobuf' "ONNX and protobuf are core/onnx's"
forbid -r core/io 'onnx/|core/onnx/|google/protobuf' "ONNX and protobuf are core/onnx's"
forbid -r core/qsm 'onnx/|google/protobuf' "ONNX and protobuf are core/onnx's"
forbid -r infer 'core/onnx/|onnx/|google/protobuf' "deepqsm-infer links no ONNX or protobuf"
forbid -r core/onnx 'fftw3|dnnl|oneapi/|png\.h|nifti|znzlib|zlib\.h|hdf5' "core/onnx wraps ONNX only"

# Relative includes would slip past every rule above.
relative=$(includes -r core; includes -r cuda; includes -r synth; includes -r train; includes -r infer)
relative=$(echo "$relative" | grep -E '#[[:space:]]*include[[:space:]]*"[^"]*\.\./' || true)
if [ -n "$relative" ]; then
  echo "layout: include project headers by their path from the root, not relatively:" >&2
  echo "$relative" >&2
  status=1
fi

# The floor: at most six sources of its own.
own=$(find core -maxdepth 1 -type f \( -name '*.h' -o -name '*.cpp' \) | wc -l)
if [ "$own" -gt 6 ]; then
  echo "layout: core/ holds $own sources of its own (at most 6: the floor); move the rest into a room:" >&2
  find core -maxdepth 1 -type f \( -name '*.h' -o -name '*.cpp' \) >&2
  status=1
fi

if [ $status -eq 0 ]; then echo "layout: every include points down (docs/architecture.md)"; fi
exit $status
