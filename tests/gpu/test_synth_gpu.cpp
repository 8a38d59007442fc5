// The GPU generator against its CPU twin: the dipole kernel and the cuFFT
// forward model against core/qsm/dipole (1e-5 relative), the one-kernel
// rasteriser against rasterise() (bit for bit), and whole patch sets and
// streamed batches (chi bit for bit, field 1e-5 relative), with the
// options beyond the paper switched on.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/nn/philox.h"
#include "core/qsm/dipole.h"
#include "cuda/check.h"
#include "cuda/memory.h"
#include "cuda/qsm/dipole_gpu.h"
#include "synth/stream.h"
#include "synth/synth_gpu.h"
#include "tests/compare_util.h"

using namespace dq;
using namespace dq::test;

namespace {

Recipe gpu_recipe() {
  Recipe r;
  r.volume_size = 48;
  r.cubes_min = 10;
  r.cubes_max = 20;
  r.spheres_min = 10;
  r.spheres_max = 20;
  r.patch_size = 16;
  r.patches_per_volume = 6;
  return r;
}

Recipe with_options(Recipe r) {
  r.rects_min = 3;
  r.rects_max = 8;
  r.additive = true;
  r.chi_dist = "normal";
  r.chi_std = 0.05;
  r.lesion_prob = 0.1;
  r.b0_cone_deg = 25;
  r.voxel_mm = {0.9, 1.0, 1.6};
  r.noise_std = 0.001;  // a range: each volume draws its level (volume_noise_std)
  r.noise_std_max = 0.004;
  r.region_prob = 0.5;
  r.pad = 5;
  return r;
}

}  // namespace

TEST_CASE("GPU dipole kernel equals the CPU kernel", "[gpu]") {
  const Vec3 b{0.3, -0.2, 0.9};
  for (const Dims3 d : {Dims3{16, 16, 16}, Dims3{9, 12, 17}, Dims3{20, 7, 10}}) {
    const Vec3 voxel{0.8, 1.1, 2.0};
    const std::vector<float> want = dipole_kernel(d, voxel, b, 1.0 / 3.0);
    DeviceBuffer out(sizeof(float) * want.size());
    cuda_dipole_kernel(d, voxel, b, 1.0 / 3.0, static_cast<float*>(out.data()), nullptr);
    std::vector<float> got(want.size());
    DQ_CUDA(cudaMemcpy(got.data(), out.data(), sizeof(float) * got.size(), cudaMemcpyDeviceToHost));
    double worst = 0;
    for (size_t i = 0; i < got.size(); ++i)
      worst = std::max(worst, double(std::fabs(got[i] - want[i])));
    CHECK(worst == 0.0);  // one formula (dipole_bin), rounded alike: no FMA on either side
  }
}

TEST_CASE("GPU forward model equals the CPU one to 1e-5", "[gpu]") {
  // Odd and even x (23 and 24): on an even grid with B0 oblique the kernel's
  // Nyquist planes must be Hermitian-symmetric (core/qsm/dipole.cpp), or cuFFT's
  // C2R and FFTW's would read them differently.
  for (const Dims3 d : {Dims3{20, 18, 23}, Dims3{20, 18, 24}})
    for (int64_t pad : {0, 6}) {
      std::vector<float> chi(static_cast<size_t>(d.numel()));
      for (size_t i = 0; i < chi.size(); ++i) chi[i] = philox_uniform(9, i) - 0.5f;
      for (double k0 : {0.0, 1.0 / 3.0}) {
        const Vec3 voxel{1.0, 0.7, 1.3}, b{0.1, 0.2, 1.0};
        std::vector<float> want(chi.size()), got(chi.size());
        forward_field(chi.data(), d, voxel, b, k0, pad, want.data());
        cuda_forward_field(chi.data(), d, voxel, b, k0, pad, got.data());
        CHECK(rel_error(got.data(), want.data(), d.numel()) <= 1e-5);
      }
    }
}

TEST_CASE("GPU rasteriser equals the CPU rasteriser bit for bit", "[gpu]") {
  for (const Recipe& r : {gpu_recipe(), with_options(gpu_recipe())}) {
    const int64_t n = r.volume_size, total = n * n * n;
    for (int64_t v = 0; v < 4; ++v) {
      const std::vector<SynthShape> shapes = draw_shapes(r, 17, v);
      std::vector<float> want(static_cast<size_t>(total), 0.0f), got(want.size());
      rasterise(r, shapes, want.data());
      DeviceBuffer chi(sizeof(float) * want.size()), scratch;
      DQ_CUDA(cudaMemset(chi.data(), 0, chi.size()));
      rasterise_gpu(r, shapes, static_cast<float*>(chi.data()), scratch, nullptr);
      DQ_CUDA(cudaMemcpy(got.data(), chi.data(), chi.size(), cudaMemcpyDeviceToHost));
      CHECK(std::memcmp(got.data(), want.data(), chi.size()) == 0);
    }
  }
}

TEST_CASE("CPU and GPU generators make the same volumes and patches", "[gpu]") {
  for (const Recipe& r : {gpu_recipe(), with_options(gpu_recipe())}) {
    const int64_t n = r.volume_size, total = n * n * n;
    GpuSynth gen(r, nullptr);
    for (int64_t v = 0; v < 3; ++v) {
      const SynthVolume cpu = generate_volume(r, 5, v);
      const Vec3 b0 = gen.generate(5, v);
      CHECK(b0 == cpu.b0);
      std::vector<float> chi(static_cast<size_t>(total)), field(chi.size());
      gen.download(chi.data(), field.data());
      CHECK(chi == cpu.chi);
      CHECK(rel_error(field.data(), cpu.field.data(), total) <= 1e-5);
    }
    const PatchSet want = generate_patches(r, 8, 2, 3), got = generate_patches_gpu(r, 8, 2, 3);
    REQUIRE(got.chi.shape() == want.chi.shape());
    CHECK(std::memcmp(got.chi.raw(), want.chi.raw(), want.chi.nbytes()) == 0);
    CHECK(rel_error(got.field.f32(), want.field.f32(), want.field.numel()) <= 1e-5);
  }
}

TEST_CASE("the GPU stream deals the CPU stream's batches", "[gpu]") {
  StreamConfig cfg;
  cfg.recipe = with_options(gpu_recipe());
  cfg.batch = 5;
  cfg.pool = 3;
  cfg.device = "gpu";
  PatchStream s(cfg, 2);
  for (int64_t k = 2; k < 9; ++k) {
    const Batch got = s.next(), want = make_batch(cfg, k);
    CHECK(got.step == k);
    CHECK(std::memcmp(got.chi.raw(), want.chi.raw(), want.chi.nbytes()) == 0);
    CHECK(rel_error(got.field.f32(), want.field.f32(), want.field.numel()) <= 1e-5);
  }
}
