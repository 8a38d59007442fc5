// The launch configuration every kernel file shares: 256 threads and a
// grid-stride loop, with the grid capped so huge tensors do not launch
// millions of blocks (8192 x 256 threads covers every SM of an H100 many
// times over). The network's kernels (cuda/nn), the GPU physics (cuda/qsm)
// and the generator (synth/) all size their grids here.
//
// DQ_LAUNCH is the one launch syntax: DQ_LAUNCH(kernel, grid, block, shared
// bytes, stream)(arguments...). Under nvcc it is the <<<...>>> launch; in
// the emu build (DEEPQSM_GPU=emu) the emulator (cuda/emu) runs the grid on
// the CPU, checking the configuration and that pointer arguments are device
// memory, and records the launch. A kernel with template arguments holding a
// comma goes in parentheses: DQ_LAUNCH((k<A, B>), ...).
#pragma once
#include <cstdint>

#if defined(DEEPQSM_EMU)
#include <cuda_runtime.h>
#define DQ_LAUNCH(kernel, grid, block, shmem, stream)                       \
  ::dq_emu::launch(#kernel, __FILE__, __LINE__, grid, block, shmem, stream, \
                   [](auto... dq_args_) { kernel(dq_args_...); })
#else
#define DQ_LAUNCH(kernel, grid, block, shmem, stream) kernel<<<grid, block, shmem, stream>>>
#endif

namespace dq::detail {

constexpr int kThreads = 256;
inline unsigned grid_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 8192 ? blocks : 8192);
}

}  // namespace dq::detail
