// core/parallel.h: the loops cover their range exactly once whatever the
// thread count, and sums do not depend on it; nor do the CPU backend's
// forward ops. Built with OpenMP like deepqsm_core, so these run the branch
// the library uses.
#ifndef _OPENMP
#error "tests/test_parallel.cpp must be built with OpenMP, as deepqsm_core is"
#endif
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdint>
#include <cstring>
#include <iterator>
#include <random>
#include <stdexcept>
#include <vector>

#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/tensor.h"
#include "core/parallel.h"
#include "core/qsm/dipole.h"

namespace {

// Restores the thread setting a test changed.
struct ThreadsGuard {
  int saved = dq::cpu_threads();
  ~ThreadsGuard() { dq::set_cpu_threads(saved); }
};

}  // namespace

TEST_CASE("parallel_for visits every item once, in contiguous chunks", "[parallel]") {
  ThreadsGuard guard;
  for (int threads : {1, 2, 3, 8}) {
    dq::set_cpu_threads(threads);
    CHECK(dq::cpu_threads() == threads);
    for (int64_t n : {0, 1, 5, 7, 64, 1000, 4099}) {
      for (int64_t grain : {1, 3, 100}) {
        INFO(threads << " threads, n " << n << ", grain " << grain);
        std::vector<std::atomic<int>> seen(static_cast<size_t>(n));
        std::atomic<int> bad_chunks{0};
        dq::parallel_for(n, grain, [&](int64_t b, int64_t e) {
          if (!(0 <= b && b < e && e <= n)) ++bad_chunks;
          for (int64_t i = b; i < e; ++i) ++seen[static_cast<size_t>(i)];
        });
        CHECK(bad_chunks == 0);
        for (const auto& s : seen) REQUIRE(s == 1);
      }
    }
  }
}

TEST_CASE("parallel_for rethrows a chunk's exception after every chunk ended", "[parallel]") {
  // Thrown inside the OpenMP region it would end the process (std::terminate).
  ThreadsGuard guard;
  for (int threads : {1, 3}) {
    dq::set_cpu_threads(threads);
    std::atomic<int> done{0};
    INFO(threads << " threads");
    CHECK_THROWS_WITH(dq::parallel_for(300, 1,
                                       [&](int64_t b, int64_t e) {
                                         if (b <= 150 && 150 < e) throw std::runtime_error("chunk");
                                         done += static_cast<int>(e - b);
                                       }),
                      "chunk");
    CHECK(done == (threads == 1 ? 0 : 200));  // the other chunks ran to their end
  }
}

TEST_CASE("parallel_sum gives the same bits on any thread count", "[parallel]") {
  ThreadsGuard guard;
  // Terms of very different sizes, so a different order of addition would
  // change the rounding.
  const int64_t n = 5 * dq::kSumBlock + 123;
  std::vector<double> v(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    v[static_cast<size_t>(i)] = (i % 7 == 0 ? 1e8 : 1e-3) * (i % 3 - 1.1);
  auto sum = [&] {
    return dq::parallel_sum(n, [&](int64_t b, int64_t e) {
      double s = 0.0;
      for (int64_t i = b; i < e; ++i) s += v[static_cast<size_t>(i)];
      return s;
    });
  };
  // The definition: block sums in order, added in order.
  double expected = 0.0;
  for (int64_t b = 0; b < n; b += dq::kSumBlock) {
    double s = 0.0;
    for (int64_t i = b; i < std::min(n, b + dq::kSumBlock); ++i) s += v[static_cast<size_t>(i)];
    expected += s;
  }
  for (int threads : {1, 2, 3, 8}) {
    dq::set_cpu_threads(threads);
    INFO(threads << " threads");
    CHECK(sum() == expected);
  }
  CHECK(dq::parallel_sum(0, [](int64_t, int64_t) { return 1.0; }) == 0.0);
}

TEST_CASE("Tensor::zeros_parallel zeroes every byte on any thread count", "[parallel]") {
  ThreadsGuard guard;
  for (int threads : {1, 3}) {
    dq::set_cpu_threads(threads);
    // Sizes below one grain, and several grains with a ragged end, in fp32 and bf16.
    for (int64_t n : {int64_t{0}, int64_t{5}, 3 * dq::kPointwiseGrain + 17}) {
      for (dq::DType dt : {dq::DType::f32, dq::DType::bf16}) {
        dq::Tensor t = dq::Tensor::zeros_parallel(dq::Shape{n}, dt);
        REQUIRE(t.numel() == n);
        CHECK(reinterpret_cast<uintptr_t>(t.raw()) % 64 == 0);
        const auto* b = static_cast<const unsigned char*>(t.raw());
        size_t nonzero = 0;
        for (size_t i = 0; i < t.nbytes(); ++i) nonzero += b[i] != 0;
        CHECK(nonzero == 0);
      }
    }
  }
}

TEST_CASE("the network's forward ops give the same bytes on any thread count", "[parallel]") {
  // deepqsm-infer promises the same output for any --threads: every op of an
  // inference pass splits its work over voxels and channels, never a sum.
  // (oneDNN's AVX2 matmul, once used for the transposed convolution, split
  // sums by thread count: its 1000x16x64 product differed on 1 and 2 threads.)
  ThreadsGuard guard;
  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  const auto random = [&](const dq::Shape& s) {
    dq::Tensor t = dq::Tensor::zeros(s);
    for (int64_t i = 0; i < t.numel(); ++i) t.f32()[i] = normal(rng);
    return t;
  };
  struct Layer {
    int64_t n, ci, co;
  };
  const Layer layers[] = {{10, 16, 8}, {20, 8, 4}, {12, 1, 4}, {6, 32, 16}};
  std::vector<dq::Tensor> x, w, wt, b;
  for (const Layer& l : layers) {
    x.push_back(random({1, l.n, l.n, l.n, l.ci}));
    w.push_back(random({l.co, 3, 3, 3, l.ci}));
    wt.push_back(random({l.ci, 2, 2, 2, l.co}));
    b.push_back(random({l.co}));
  }
  std::vector<std::vector<dq::Tensor>> out(2);
  for (int t = 0; t < 2; ++t) {
    dq::set_cpu_threads(t == 0 ? 1 : 3);  // before the backend builds its primitives
    auto be = dq::make_cpu_backend();
    for (size_t i = 0; i < std::size(layers); ++i) {
      const Layer& l = layers[i];
      dq::Tensor conv = dq::Tensor::zeros({1, l.n, l.n, l.n, l.co});
      dq::Tensor up = dq::Tensor::zeros({1, 2 * l.n, 2 * l.n, 2 * l.n, l.co});
      dq::Tensor pool = dq::Tensor::zeros({1, l.n / 2, l.n / 2, l.n / 2, l.ci});
      be->conv3d_forward(x[i], w[i], &b[i], conv, true);
      be->deconv3d_forward(x[i], wt[i], &b[i], up, true);
      be->maxpool_forward(x[i], pool);
      out[t].push_back(std::move(conv));
      out[t].push_back(std::move(up));
      out[t].push_back(std::move(pool));
    }
  }
  for (size_t k = 0; k < out[0].size(); ++k) {
    INFO("layer " << k / 3 << ", op " << k % 3 << " (conv, transposed conv, max-pool)");
    CHECK(std::memcmp(out[0][k].raw(), out[1][k].raw(), out[0][k].nbytes()) == 0);
  }
}

TEST_CASE("the padded dipole filter gives the same bytes on any thread count", "[parallel]") {
  // Each 1-D transform and product is computed alone, whichever thread runs
  // it, so the threaded filter (the refinement's) equals the caller-only one
  // (the generators') exactly.
  ThreadsGuard guard;
  const dq::Dims3 d{37, 30, 26};
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> chi(static_cast<size_t>(d.numel()));
  for (float& v : chi) v = u(rng);
  const std::vector<float> kernel =
      dq::dipole_kernel(d.padded(6), {1.0, 1.0, 1.0}, {0.0, 0.0, 1.0}, 1.0 / 3.0);
  std::vector<float> one(chi.size());
  dq::PaddedFilter(d, 6, kernel).apply(chi.data(), one.data());
  for (int threads : {1, 2, 3}) {
    dq::set_cpu_threads(threads);
    std::vector<float> threaded(chi.size());
    dq::PaddedFilter(d, 6, kernel, /*threaded=*/true).apply(chi.data(), threaded.data());
    INFO(threads << " threads");
    CHECK(std::memcmp(one.data(), threaded.data(), sizeof(float) * one.size()) == 0);
  }
}
