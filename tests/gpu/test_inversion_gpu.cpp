// GPU inversions (cuda/qsm/inversion.h) against their CPU twins on the same
// inputs: TKD, Tikhonov (both regularisers), TV-ADMM (iterates and
// objective history) and the CG refinement, with and without padding and
// masks. Error is max |gpu - cpu| / max |cpu|; the FFTs differ (cuFFT vs
// FFTW) so agreement is to fp32 rounding, growing slowly over iterations.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "core/nn/philox.h"
#include "core/qsm/dipole.h"
#include "core/qsm/inversion.h"
#include "core/qsm/refine.h"
#include "core/qsm/tkd.h"
#include "cuda/qsm/inversion.h"

using namespace dq;

namespace {

std::vector<float> random_field(const Dims3& d, uint64_t key) {
  std::vector<float> chi(static_cast<size_t>(d.numel()));
  for (size_t i = 0; i < chi.size(); ++i) chi[i] = 0.2f * (philox_uniform(key, i) - 0.5f);
  std::vector<float> f(chi.size());
  forward_field(chi.data(), d, {1.0, 1.0, 1.0}, {0.0, 0.0, 1.0}, 1.0 / 3.0, 0, f.data());
  return f;
}

double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, static_cast<double>(std::fabs(got[i] - want[i])));
    den = std::max(den, static_cast<double>(std::fabs(want[i])));
  }
  return num / den;
}

const Dims3 kDims{20, 18, 17};
const Vec3 kVox{1.0, 1.1, 1.2};
const Vec3 kB0{0.1, 0.2, 1.0};

}  // namespace

TEST_CASE("GPU TKD and Tikhonov match the CPU", "[gpu]") {
  const std::vector<float> f = random_field(kDims, 1);
  std::vector<uint8_t> mask(f.size(), 1);
  for (size_t i = 0; i < mask.size(); i += 7) mask[i] = 0;
  for (int64_t pad : {0, 3}) {
    std::vector<float> cpu(f.size()), gpu(f.size());
    tkd(f.data(), kDims, kVox, kB0, 0.19, 1.0 / 3.0, pad, cpu.data());
    cuda_tkd(f.data(), kDims, kVox, kB0, 0.19, 1.0 / 3.0, pad, gpu.data());
    CHECK(rel_err(gpu, cpu) < 1e-5);
    for (TikhonovReg reg : {TikhonovReg::identity, TikhonovReg::gradient}) {
      tikhonov(f.data(), mask.data(), kDims, kVox, kB0, 0.01, reg, 0.0, pad, cpu.data());
      cuda_tikhonov(f.data(), mask.data(), kDims, kVox, kB0, 0.01, reg, 0.0, pad, gpu.data());
      CHECK(rel_err(gpu, cpu) < 1e-5);
    }
  }
}

TEST_CASE("GPU TV-ADMM matches the CPU, objective included", "[gpu]") {
  const std::vector<float> f = random_field(kDims, 2);
  TvOptions opt;
  opt.iterations = 30;
  opt.tolerance = 0.0;
  std::vector<float> cpu(f.size()), gpu(f.size());
  std::vector<double> ocpu, ogpu;
  const int ic = tv_admm(f.data(), nullptr, kDims, kVox, kB0, opt, 1.0 / 3.0, 2, cpu.data(), &ocpu);
  const int ig =
      cuda_tv_admm(f.data(), nullptr, kDims, kVox, kB0, opt, 1.0 / 3.0, 2, gpu.data(), &ogpu);
  CHECK(ic == ig);
  CHECK(rel_err(gpu, cpu) < 1e-3);
  REQUIRE(ocpu.size() == ogpu.size());
  for (size_t i = 0; i < ocpu.size(); ++i) CHECK(ogpu[i] == Approx(ocpu[i]).epsilon(1e-4));
}

TEST_CASE("GPU CG refinement matches the CPU", "[gpu]") {
  const std::vector<float> f = random_field(kDims, 3), net = random_field(kDims, 4);
  std::vector<uint8_t> mask(f.size(), 1);
  for (size_t i = 0; i < mask.size(); i += 5) mask[i] = 0;
  RefineOptions opt;
  opt.iterations = 15;
  opt.pad = 2;
  std::vector<float> cpu(f.size()), gpu(f.size());
  std::vector<double> ocpu, ogpu;
  refine_chi(f.data(), net.data(), mask.data(), kDims, kVox, kB0, opt, cpu.data(), &ocpu);
  cuda_refine_chi(f.data(), net.data(), mask.data(), kDims, kVox, kB0, opt, gpu.data(), &ogpu);
  CHECK(rel_err(gpu, cpu) < 1e-3);
  REQUIRE(ocpu.size() == ogpu.size());
  for (size_t i = 0; i < ocpu.size(); ++i) CHECK(ogpu[i] == Approx(ocpu[i]).epsilon(1e-4));
}
