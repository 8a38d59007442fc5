#include "cuda/device_pool.h"

#include <algorithm>

namespace dq {

namespace {

// New Arenas are at least this big, so a run of small first-touch requests
// costs one cudaMalloc, not one each.
constexpr size_t kMinGrowth = size_t{256} << 20;

size_t round_up(size_t bytes) {
  return (bytes + Arena::kAlignment - 1) / Arena::kAlignment * Arena::kAlignment;
}

}  // namespace

std::shared_ptr<DevicePool> DevicePool::create(size_t initial_bytes) {
  return std::shared_ptr<DevicePool>(new DevicePool(initial_bytes));
}

DevicePool::DevicePool(size_t initial_bytes)
    : growth_bytes_(std::max(kMinGrowth, initial_bytes / 4)) {
  if (initial_bytes > 0) {
    arenas_.push_back(std::make_unique<Arena>(round_up(initial_bytes)));
    stats_.capacity = arenas_.back()->capacity();
  }
}

std::shared_ptr<void> DevicePool::acquire(size_t bytes) {
  if (bytes == 0) return nullptr;
  const size_t want = round_up(bytes);
  void* p = nullptr;
  size_t size = want;
  {
    std::lock_guard<std::mutex> lock(mu_);
    // 1. A free block at most 25% larger: the steady state, shapes repeat.
    auto it = free_.lower_bound(want);
    if (it != free_.end() && it->first <= want + want / 4) {
      size = it->first;
      p = it->second;
      free_.erase(it);
    }
    // 2. Fresh space in the newest Arena.
    if (!p && !arenas_.empty() && arenas_.back()->capacity() - arenas_.back()->used() >= want)
      p = arenas_.back()->allocate(want);
    // 3. Any larger free block, wasting its tail, rather than a new cudaMalloc.
    if (!p && it != free_.end()) {
      size = it->first;
      p = it->second;
      free_.erase(it);
    }
    // 4. Grow: one cudaMalloc (first touch only; see the header).
    if (!p) {
      arenas_.push_back(std::make_unique<Arena>(std::max(want, growth_bytes_)));
      stats_.capacity += arenas_.back()->capacity();
      ++stats_.growths;
      p = arenas_.back()->allocate(want);
    }
    stats_.in_use += size;
    stats_.peak = std::max(stats_.peak, stats_.in_use);
  }
  std::shared_ptr<DevicePool> self = shared_from_this();
  return std::shared_ptr<void>(p, [self, size](void* q) { self->release(q, size); });
}

void DevicePool::release(void* p, size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  free_.emplace(bytes, p);
  stats_.in_use -= bytes;
}

DevicePoolStats DevicePool::stats() const {
  std::lock_guard<std::mutex> lock(mu_);
  return stats_;
}

}  // namespace dq
