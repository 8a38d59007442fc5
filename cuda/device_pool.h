// The CUDA backend's device memory: a caching pool over Arenas
// (cuda/memory.h). Backend::alloc, convolution workspaces and conversion
// scratch all come from here.
//
// The first Arena is sized at start (CudaBackendOptions::arena_bytes). A
// block is carved from it on first request; when its last holder lets go it
// goes back to a free list and the next request of a similar size takes it
// again, without touching the driver. The U-Net allocates every activation
// on its first step and keeps them, so from the second step on every request
// is served from free blocks: there is no cudaMalloc in the steady state.
// Only when a first-touch request does not fit does the pool grow by a new
// Arena (one cudaMalloc, counted in growths()); a trainer that wants a hard
// guarantee checks that growths() stays constant after step one.
//
// Blocks are handed out to one stream's work (the backend's): a block freed
// on the host while kernels that use it are still queued may be handed out
// again at once, which is safe because its next user is queued behind them
// on the same stream.
#pragma once
#include <cstddef>
#include <map>
#include <memory>
#include <mutex>
#include <vector>

#include "cuda/memory.h"

namespace dq {

struct DevicePoolStats {
  size_t capacity = 0;  // bytes held from the driver (all Arenas)
  size_t in_use = 0;    // bytes in blocks currently handed out
  size_t peak = 0;      // largest in_use so far
  int growths = 0;      // Arenas added after the first
};

class DevicePool : public std::enable_shared_from_this<DevicePool> {
 public:
  static std::shared_ptr<DevicePool> create(size_t initial_bytes);

  // A block of at least `bytes`, aligned to Arena::kAlignment and not
  // zeroed. The returned owner's get() is the pointer; the block returns to
  // the pool when the last copy of the owner is destroyed. bytes == 0 gives
  // an empty owner.
  std::shared_ptr<void> acquire(size_t bytes);

  DevicePoolStats stats() const;

 private:
  explicit DevicePool(size_t initial_bytes);
  void release(void* p, size_t bytes);

  mutable std::mutex mu_;
  std::vector<std::unique_ptr<Arena>> arenas_;
  std::multimap<size_t, void*> free_;  // block size -> block
  size_t growth_bytes_;
  DevicePoolStats stats_;
};

}  // namespace dq
