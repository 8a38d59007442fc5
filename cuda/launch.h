// The launch configuration every kernel file shares: 256 threads and a
// grid-stride loop, with the grid capped so huge tensors do not launch
// millions of blocks (8192 x 256 threads covers every SM of an H100 many
// times over). The network's kernels (cuda/nn), the GPU physics (cuda/qsm)
// and the generator (synth/) all size their grids here.
#pragma once
#include <cstdint>

namespace dq::detail {

constexpr int kThreads = 256;
inline unsigned grid_for(int64_t n) {
  int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 8192 ? blocks : 8192);
}

}  // namespace dq::detail
