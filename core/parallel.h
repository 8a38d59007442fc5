// Minimal parallel loops for the CPU side's memory-bound work: the CPU
// backend's pointwise ops and the volume loops of inference (the ensemble's
// blur, the refinement's CG, the padded dipole filter); oneDNN and FFTW
// thread their own work. Every item is computed exactly as in a serial loop,
// and parallel_sum adds fixed blocks in a fixed order, so results do not
// depend on the thread count.
//
// With OpenMP (the build links it into deepqsm_core) the chunks run on
// OpenMP's thread pool, the one oneDNN's primitives use: its workers spin for
// a while after each primitive, and a loop on threads of its own had to share
// the cores with them (11 % of a CPU training step went to that spinning).
#pragma once
#include <algorithm>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace dq {

// Threads for the CPU work (oneDNN, FFTW when threaded, the loops below):
// OpenMP's count (OMP_NUM_THREADS, else the hardware threads) unless
// set_cpu_threads chose one; at least 1. Set it before building primitives
// or plans, i.e. at start (deepqsm-infer --threads).
int cpu_threads();
void set_cpu_threads(int n);
// The machine's hardware threads, at least 1.
int hardware_threads();

// Items per thread below which a pointwise loop over floats stays on one
// thread (a thread's share of work must outweigh waking it).
constexpr int64_t kPointwiseGrain = int64_t{1} << 18;

// Calls f(begin, end) on contiguous chunks covering [0, n). Below `grain`
// items per thread, starting a thread costs more than it saves, so small
// ranges run inline on the caller. An exception thrown by f (say, a failed
// allocation) is caught on its thread and the first one rethrown here once
// every chunk has ended; escaping an OpenMP region or a std::thread it
// would end the process.
template <class F>
void parallel_for(int64_t n, int64_t grain, const F& f) {
  int64_t chunks = std::min<int64_t>(cpu_threads(), n / std::max<int64_t>(1, grain));
  if (chunks <= 1) {
    if (n > 0) f(int64_t{0}, n);
    return;
  }
  int64_t per = (n + chunks - 1) / chunks;
  std::exception_ptr error;
  std::mutex error_mutex;
  const auto run = [&](int64_t begin, int64_t end) {
    try {
      f(begin, end);
    } catch (...) {
      std::lock_guard<std::mutex> lock(error_mutex);
      if (!error) error = std::current_exception();
    }
  };
#ifdef _OPENMP
#pragma omp parallel for schedule(static, 1) num_threads(static_cast<int>(chunks))
  for (int64_t c = 0; c < chunks; ++c)
    if (c * per < n) run(c * per, std::min(n, (c + 1) * per));
#else
  std::vector<std::thread> workers;
  for (int64_t begin = per; begin < n; begin += per)
    workers.emplace_back([&run, begin, end = std::min(n, begin + per)] { run(begin, end); });
  run(int64_t{0}, per);
  for (std::thread& t : workers) t.join();
#endif
  if (error) std::rethrow_exception(error);
}

// The sum over [0, n) of block_sum(i0, i1), which sums one contiguous block:
// blocks of kSumBlock items whatever the thread count, their sums added in
// order, so the result is the same on any machine.
constexpr int64_t kSumBlock = int64_t{1} << 16;
template <class F>
double parallel_sum(int64_t n, const F& block_sum) {
  const int64_t blocks = (n + kSumBlock - 1) / kSumBlock;
  std::vector<double> part(static_cast<size_t>(blocks));
  parallel_for(blocks, 4, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      part[static_cast<size_t>(b)] = block_sum(b * kSumBlock, std::min(n, (b + 1) * kSumBlock));
  });
  double s = 0.0;
  for (double v : part) s += v;
  return s;
}

}  // namespace dq
