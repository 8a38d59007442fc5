// The padded dipole convolution on the CPU, side by side: FFTW's 3-D plans on
// the whole padded grid (how core/qsm/dipole.cpp did it before 2026-12-02, kept
// here as the baseline) against PaddedFilter's 1-D passes that skip the
// padding. Grids: the challenge brain's 160^3 and a whole brain's
// 224x272x160, both padded by 32 voxels per side (deepqsm-infer --refine's
// default); threaded (the refinement: cpu_threads() threads) and on one
// thread (a generator's worker, one volume each), padded and not (the paper
// recipe's generator pads nothing, so there is nothing to skip).
//
//   deepqsm_bench_filter [repeats]     (default 5; OMP_NUM_THREADS sets the threads)
//
// Each repeat runs both in turn; the medians and their ratio are printed,
// with the largest difference between the two outputs.
#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "benchmarks/timing.h"
#include "core/nn/philox.h"
#include "core/parallel.h"
#include "core/qsm/dipole.h"

using namespace dq;

namespace {

using bench::median;
using bench::seconds;

// The former path: zero-pad into the 3-D plan's buffer, R2C, multiply, C2R, crop.
void filter_3d(Fft3& fft, const std::vector<float>& kernel, const float* in, const Dims3& d,
               int64_t pad, float* out) {
  const Dims3 g = fft.dims();
  float* buf = fft.real();
  std::memset(buf, 0, sizeof(float) * static_cast<size_t>(g.numel()));
  const size_t row = sizeof(float) * static_cast<size_t>(d.nx);
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      std::memcpy(buf + ((z + pad) * g.ny + y + pad) * g.nx + pad, in + (z * d.ny + y) * d.nx, row);
  fft.forward();
  std::complex<float>* s = fft.spectrum();
  for (int64_t i = 0; i < g.half_numel(); ++i) s[i] *= kernel[static_cast<size_t>(i)];
  fft.inverse();
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y)
      std::memcpy(out + (z * d.ny + y) * d.nx, buf + ((z + pad) * g.ny + y + pad) * g.nx + pad,
                  row);
}

void compare(const Dims3& d, int64_t pad, bool threaded, int repeats) {
  std::vector<float> chi(static_cast<size_t>(d.numel())), a(chi.size()), b(chi.size());
  for (size_t i = 0; i < chi.size(); ++i) chi[i] = philox_uniform(7, i) - 0.5f;
  const Dims3 g = d.padded(pad);
  const std::vector<float> kernel = dipole_kernel(g, {1.0, 1.0, 1.0}, {0.0, 0.0, 1.0}, 1.0 / 3.0);
  Fft3 fft(g, threaded ? fft_threads() : 1);
  PaddedFilter filter(d, pad, kernel, threaded);
  std::vector<double> t3, tp;
  for (int r = 0; r < repeats + 1; ++r) {  // the first round warms up
    const double s3 = seconds([&] { filter_3d(fft, kernel, chi.data(), d, pad, a.data()); });
    const double sp = seconds([&] { filter.apply(chi.data(), b.data()); });
    if (r == 0) continue;
    t3.push_back(s3);
    tp.push_back(sp);
  }
  double diff = 0.0, peak = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    diff = std::max(diff, static_cast<double>(std::fabs(a[i] - b[i])));
    peak = std::max(peak, static_cast<double>(std::fabs(a[i])));
  }
  std::printf(
      "%3lldx%3lldx%3lld pad %2lld  %-10s  3-D plans %7.1f ms   PaddedFilter %7.1f ms   "
      "%.2fx   max |diff| %.1e (of %.2f)\n",
      static_cast<long long>(d.nz), static_cast<long long>(d.ny), static_cast<long long>(d.nx),
      static_cast<long long>(pad), threaded ? "threaded" : "one thread", 1e3 * median(t3),
      1e3 * median(tp), median(t3) / median(tp), diff, peak);
}

}  // namespace

int main(int argc, char** argv) {
  const int repeats = argc > 1 ? std::atoi(argv[1]) : 5;
  if (repeats < 1) {
    std::fprintf(stderr, "usage: deepqsm_bench_filter [repeats >= 1]\n");
    return 2;
  }
  std::printf("padded dipole filter, median of %d; threaded = %d threads\n", repeats,
              cpu_threads());
  compare({160, 160, 160}, 32, true, repeats);
  compare({160, 272, 224}, 32, true, repeats);
  compare({160, 160, 160}, 32, false, repeats);
  compare({160, 160, 160}, 0, false, repeats);  // the paper recipe's generator: no padding
  return 0;
}
