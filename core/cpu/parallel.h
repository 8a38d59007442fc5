// A minimal parallel loop for the CPU backend's memory-bound ops (oneDNN
// threads its own primitives). Every item is computed exactly as in a serial
// loop, so results do not depend on the thread count.
//
// With OpenMP (the build links it into deepqsm_core) the chunks run on
// OpenMP's thread pool, the one oneDNN's primitives use: its workers spin for
// a while after each primitive, and a loop on threads of its own had to share
// the cores with them (11 % of a CPU training step went to that spinning).
#pragma once
#include <algorithm>
#include <cstdint>
#include <thread>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace dq::cpu {

// Calls f(begin, end) on contiguous chunks covering [0, n). Below `grain`
// items per thread, starting a thread costs more than it saves, so small
// ranges run inline on the caller.
template <class F>
void parallel_for(int64_t n, int64_t grain, const F& f) {
#ifdef _OPENMP
  int64_t hw = omp_get_max_threads();  // honours OMP_NUM_THREADS, like oneDNN
#else
  int64_t hw = std::max<int64_t>(1, std::thread::hardware_concurrency());
#endif
  int64_t chunks = std::min(hw, n / std::max<int64_t>(1, grain));
  if (chunks <= 1) {
    if (n > 0) f(int64_t{0}, n);
    return;
  }
  int64_t per = (n + chunks - 1) / chunks;
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(chunks))
  for (int64_t c = 0; c < chunks; ++c)
    if (c * per < n) f(c * per, std::min(n, (c + 1) * per));
#else
  std::vector<std::thread> workers;
  for (int64_t begin = per; begin < n; begin += per)
    workers.emplace_back([&f, begin, end = std::min(n, begin + per)] { f(begin, end); });
  f(int64_t{0}, per);
  for (std::thread& t : workers) t.join();
#endif
}

}  // namespace dq::cpu
