#include "core/parallel.h"

#include <thread>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace dq {

int hardware_threads() {
  return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
}

#ifdef _OPENMP
// OpenMP's own setting is the one oneDNN and FFTW's OpenMP flavour read.
int cpu_threads() {
  return std::max(1, omp_get_max_threads());
}
void set_cpu_threads(int n) {
  omp_set_num_threads(std::max(1, n));
}
#else
namespace {
int g_threads = 0;  // 0: the hardware's
}  // namespace
int cpu_threads() {
  if (g_threads > 0) return g_threads;
  return hardware_threads();
}
void set_cpu_threads(int n) {
  g_threads = std::max(1, n);
}
#endif

}  // namespace dq
