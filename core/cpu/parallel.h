// A minimal parallel loop for the CPU backend's memory-bound ops (oneDNN
// threads its own primitives). Every item is computed exactly as in a serial
// loop, so results do not depend on the thread count.
#pragma once
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>

namespace dq::cpu {

// Calls f(begin, end) on contiguous chunks covering [0, n). Below `grain`
// items per thread, starting a thread costs more than it saves, so small
// ranges run inline on the caller.
template <class F>
void parallel_for(int64_t n, int64_t grain, const F& f) {
  int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
  int64_t chunks = std::min(hw, n / std::max<int64_t>(1, grain));
  if (chunks <= 1) {
    if (n > 0) f(int64_t{0}, n);
    return;
  }
  int64_t per = (n + chunks - 1) / chunks;
  std::vector<std::thread> workers;
  for (int64_t begin = per; begin < n; begin += per)
    workers.emplace_back([&f, begin, end = std::min(n, begin + per)] { f(begin, end); });
  f(int64_t{0}, per);
  for (std::thread& t : workers) t.join();
}

}  // namespace dq::cpu
