// Volume geometry: pad/crop round trips on odd grids, tiling against a
// whole-volume U-Net pass, resampling and rotations, unit conversion.
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/unet.h"
#include "core/qsm/phantom.h"
#include "core/qsm/volume_ops.h"

namespace {

std::vector<float> random_volume(const dq::Dims3& d, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-0.1f, 0.1f);
  std::vector<float> v(static_cast<size_t>(d.numel()));
  for (float& x : v) x = u(rng);
  return v;
}

}  // namespace

TEST_CASE("padding to a multiple and cropping back is exact on odd grids", "[volume_ops]") {
  const dq::Dims3 d{29, 41, 37};  // (z, y, x): 37 x 41 x 29 voxels
  const std::vector<float> v = random_volume(d, 3);
  for (int64_t m : {1, 8, 16}) {
    for (int64_t margin : {0, 5}) {
      const dq::PadPlan p = dq::pad_plan(d, m, margin);
      CHECK(p.out.nz % m == 0);
      CHECK(p.out.ny % m == 0);
      CHECK(p.out.nx % m == 0);
      CHECK(p.out.nz >= d.nz + 2 * margin);
      CHECK(p.off_x >= margin);
      const std::vector<float> padded = dq::pad_volume(v.data(), p);
      double sum_in = 0, sum_pad = 0;
      for (float x : v) sum_in += x;
      for (float x : padded) sum_pad += x;
      CHECK(sum_pad == Approx(sum_in).margin(1e-9));  // only zeros were added
      CHECK(dq::crop_volume(padded.data(), p) == v);
    }
  }
}

TEST_CASE("tiles' cores partition the volume and sit on the pooling grid", "[volume_ops]") {
  const dq::Dims3 d = dq::pad_plan({29, 41, 37}, 8).out;  // (32, 48, 40)
  const std::vector<dq::Tile> tiles = dq::make_tiles(d, 32, 8, 8);
  const int64_t n[3] = {d.nz, d.ny, d.nx};
  std::vector<int> hits(static_cast<size_t>(d.numel()), 0);
  for (const dq::Tile& t : tiles) {
    for (int a = 0; a < 3; ++a) {
      CHECK(t.start[a] % 8 == 0);
      CHECK(t.size[a] % 8 == 0);
      CHECK(t.core_start[a] >= t.start[a]);
      CHECK(t.core_end[a] <= t.start[a] + t.size[a]);
      CHECK(t.start[a] >= 0);  // inside the volume: no ReLU(bias) beyond its edge
      CHECK(t.start[a] + t.size[a] <= n[a]);
    }
    for (int64_t z = t.core_start[0]; z < t.core_end[0]; ++z)
      for (int64_t y = t.core_start[1]; y < t.core_end[1]; ++y)
        for (int64_t x = t.core_start[2]; x < t.core_end[2]; ++x)
          ++hits[static_cast<size_t>((z * d.ny + y) * d.nx + x)];
  }
  for (int h : hits) REQUIRE(h == 1);
  CHECK_THROWS_AS(dq::make_tiles(d, 30, 8, 8), dq::Error);             // not a multiple
  CHECK_THROWS_AS(dq::make_tiles({29, 41, 37}, 32, 8, 8), dq::Error);  // not padded first
  CHECK_THROWS_AS(dq::make_tiles(d, 32, 16, 8), dq::Error);            // no core left
}

// A small random-weight U-Net (depth 3, base 4: side multiple 4, receptive
// radius 2+4 (level 0 and 1 down) + 8 (bottleneck) + 4+2 (up) + 3 (pooling
// alignment) = 23 voxels). With a halo of 24 >= 23 and tiles on the pooling
// grid, every kept voxel sees exactly the input it sees in the whole-volume
// pass, so the two agree up to floating-point summation order: oneDNN may
// pick different blockings for the tile and whole shapes, which changes the
// rounding of the fp32 sums; 1e-5 relative to the output's peak covers that.
TEST_CASE("tiled and whole-volume U-Net outputs agree inside the volume", "[volume_ops]") {
  dq::UNetConfig cfg;
  cfg.depth = 3;
  cfg.base_filters = 4;
  cfg.dropout = 0.0f;
  dq::UNet net(cfg);
  auto be = dq::make_cpu_backend();
  dq::Tensor params = dq::Tensor::zeros({net.layout().total()});
  net.init_he(params, 42);
  const auto run = [&](const dq::Dims3& td, const std::vector<float>& in, std::vector<float>& out) {
    const dq::Shape s{1, td.nz, td.ny, td.nx, 1};
    dq::Tensor x =
        dq::Tensor::wrap(const_cast<float*>(in.data()), s, dq::DType::f32, dq::Device::cpu);
    dq::Tensor y = dq::Tensor::wrap(out.data(), s, dq::DType::f32, dq::Device::cpu);
    net.forward(*be, params, x, y, false);
  };
  // 77 x 83 x 29 voxels: x and y are tiled (5 and 6 tiles), z (padded to
  // 32) fits one tile, which keeps the test to seconds.
  const dq::Dims3 d{29, 83, 77};
  const std::vector<float> v = random_volume(d, 9);
  const dq::PadPlan p = dq::pad_plan(d, net.side_multiple());
  const std::vector<float> padded = dq::pad_volume(v.data(), p);
  std::vector<float> whole_padded(padded.size());
  run(p.out, padded, whole_padded);
  const std::vector<float> whole = dq::crop_volume(whole_padded.data(), p);

  // Tiles run on the padded grid, so tile starts are aligned with the whole
  // pass's pooling grid, and the cores are cropped back the same way.
  std::vector<float> tiled_padded(padded.size(), 0.0f);
  dq::run_tiled(padded.data(), p.out, dq::make_tiles(p.out, 64, 24, 4), run, tiled_padded.data());
  const std::vector<float> tiled = dq::crop_volume(tiled_padded.data(), p);

  double peak = 0, worst = 0;
  for (size_t i = 0; i < whole.size(); ++i) {
    peak = std::max(peak, static_cast<double>(std::fabs(whole[i])));
    worst = std::max(worst, static_cast<double>(std::fabs(whole[i] - tiled[i])));
  }
  INFO("max |tiled - whole| = " << worst << ", peak |whole| = " << peak);
  REQUIRE(peak > 0);
  CHECK(worst <= 1e-5 * peak);
}

TEST_CASE("rotation_to_z takes the B0 direction onto z", "[volume_ops]") {
  for (const dq::Vec3& b : {dq::Vec3{0, 0, 1}, dq::Vec3{0, 0, -1}, dq::Vec3{0.3, -0.2, 0.9},
                            dq::Vec3{1, 0, 0}, dq::Vec3{0.1, 0.7, -0.5}}) {
    const dq::Mat3 R = dq::rotation_to_z(b);
    const double n = std::sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2]);
    const double s = b[2] < 0 ? -1.0 : 1.0;
    for (int r = 0; r < 3; ++r) {
      const double v = (R[r * 3] * b[0] + R[r * 3 + 1] * b[1] + R[r * 3 + 2] * b[2]) * s / n;
      CHECK(v == Approx(r == 2 ? 1.0 : 0.0).margin(1e-12));
    }
    // Orthonormal: R R^T = I.
    const dq::Mat3 Rt = dq::transpose(R);
    for (int i = 0; i < 3; ++i)
      for (int j = 0; j < 3; ++j) {
        double dot = 0;
        for (int k = 0; k < 3; ++k) dot += R[i * 3 + k] * Rt[k * 3 + j];
        CHECK(dot == Approx(i == j ? 1.0 : 0.0).margin(1e-12));
      }
  }
  CHECK(dq::angle_to_z_deg({0, 0, -2}) == Approx(0.0).margin(1e-9));
  CHECK(dq::angle_to_z_deg({1, 0, 1}) == Approx(45.0));
  CHECK_THROWS_AS(dq::rotation_to_z({0, 0, 0}), dq::Error);
}

TEST_CASE("resampling: identity is exact, rotations move points as R says", "[volume_ops]") {
  const dq::Phantom ph = dq::make_head_phantom(48);
  const dq::Grid g{ph.dims, ph.voxel_mm};
  const dq::Mat3 I{1, 0, 0, 0, 1, 0, 0, 0, 1};
  const dq::Grid same = dq::rotated_bounding_grid(g, I, ph.voxel_mm[0]);
  CHECK(same.dims == g.dims);
  CHECK(dq::resample(ph.chi.data(), g, same, I) == ph.chi);

  // A smooth Gaussian blob (sigma 8 mm on 2 mm voxels) off centre at p0:
  // going to the work grid (M = R^T) puts it at R p0, and going back
  // (M = R) restores it to within trilinear interpolation error.
  const dq::Grid in{{40, 44, 48}, {2.0, 2.0, 2.0}};
  const dq::Vec3 p0{10.0, -6.0, 4.0};
  std::vector<float> blob(static_cast<size_t>(in.dims.numel()));
  for (int64_t k = 0; k < 40; ++k)
    for (int64_t j = 0; j < 44; ++j)
      for (int64_t i = 0; i < 48; ++i) {
        const double x = (i - 23.5) * 2 - p0[0], y = (j - 21.5) * 2 - p0[1],
                     z = (k - 19.5) * 2 - p0[2];
        blob[static_cast<size_t>((k * 44 + j) * 48 + i)] =
            static_cast<float>(std::exp(-(x * x + y * y + z * z) / (2 * 64.0)));
      }
  const dq::Mat3 R = dq::rotation_to_z({0.0, std::sin(25 * M_PI / 180), std::cos(25 * M_PI / 180)});
  const dq::Grid work = dq::rotated_bounding_grid(in, dq::transpose(R), 2.0);
  CHECK(work.dims.nz > in.dims.nz);  // the rotated box is larger
  const std::vector<float> there = dq::resample(blob.data(), in, work, dq::transpose(R));
  // Centre of mass in the work grid, mm.
  double m = 0, c[3] = {0, 0, 0};
  const dq::Dims3& wd = work.dims;
  for (int64_t k = 0; k < wd.nz; ++k)
    for (int64_t j = 0; j < wd.ny; ++j)
      for (int64_t i = 0; i < wd.nx; ++i) {
        const double w = there[static_cast<size_t>((k * wd.ny + j) * wd.nx + i)];
        m += w;
        c[0] += w * (i - 0.5 * (wd.nx - 1)) * 2;
        c[1] += w * (j - 0.5 * (wd.ny - 1)) * 2;
        c[2] += w * (k - 0.5 * (wd.nz - 1)) * 2;
      }
  for (int a = 0; a < 3; ++a) {
    const double want = R[a * 3] * p0[0] + R[a * 3 + 1] * p0[1] + R[a * 3 + 2] * p0[2];
    CHECK(c[a] / m == Approx(want).margin(0.05));
  }
  const std::vector<float> back = dq::resample(there.data(), work, in, R);
  double num = 0, den = 0;
  for (size_t i = 0; i < back.size(); ++i) {
    num += (back[i] - blob[i]) * (back[i] - blob[i]);
    den += blob[i] * blob[i];
  }
  CHECK(std::sqrt(num / den) < 0.02);  // two trilinear passes on a 4-voxel sigma
}

TEST_CASE("anisotropic grids resample to isotropic covering the volume", "[volume_ops]") {
  const dq::Grid g{{20, 30, 30}, {1.0, 1.0, 2.0}};
  const dq::Grid iso = dq::rotated_bounding_grid(g, {1, 0, 0, 0, 1, 0, 0, 0, 1}, 1.0);
  CHECK(iso.dims.nx == 30);
  CHECK(iso.dims.ny == 30);
  CHECK(iso.dims.nz == 39);  // (20 - 1) * 2 mm / 1 mm + 1
  // A voxel side far below the others asks for an impossible grid: refused in words.
  CHECK_THROWS_WITH(dq::rotated_bounding_grid(g, {1, 0, 0, 0, 1, 0, 0, 0, 1}, 1e-30),
                    Catch::Contains("check the voxel sizes"));
  // A linear ramp in z is reproduced exactly by trilinear interpolation.
  std::vector<float> ramp(static_cast<size_t>(g.dims.numel()));
  for (int64_t z = 0; z < 20; ++z)
    for (int64_t i = 0; i < 900; ++i)
      ramp[static_cast<size_t>(z * 900 + i)] = static_cast<float>(z);
  const std::vector<float> up = dq::resample(ramp.data(), g, iso, {1, 0, 0, 0, 1, 0, 0, 0, 1});
  for (int64_t z = 0; z < 39; ++z)
    CHECK(up[static_cast<size_t>(z * 900 + 455)] == Approx(0.5 * z).margin(1e-5));
}

TEST_CASE("unit conversion to ppm", "[volume_ops]") {
  // 3 T: 1 ppm = 127.73 Hz.
  CHECK(dq::to_ppm_factor(dq::FieldUnit::hz, 3.0, 0) == Approx(1e6 / (42.577478e6 * 3.0)));
  CHECK(127.732434 * dq::to_ppm_factor(dq::FieldUnit::hz, 3.0, 0) == Approx(1.0).epsilon(1e-6));
  // 1 ppm at 3 T and TE 25 ms accumulates 2 pi * 127.73 * 0.025 = 20.06 rad.
  const double rad = 2 * M_PI * 127.732434 * 0.025;
  CHECK(rad * dq::to_ppm_factor(dq::FieldUnit::rad, 3.0, 0.025) == Approx(1.0).epsilon(1e-6));
  CHECK(dq::to_ppm_factor(dq::FieldUnit::ppm, 0, 0) == 1.0);
  CHECK_THROWS_AS(dq::to_ppm_factor(dq::FieldUnit::hz, 0, 0), dq::Error);
  CHECK_THROWS_AS(dq::to_ppm_factor(dq::FieldUnit::rad, 3, 0), dq::Error);
  CHECK_THROWS_AS(dq::field_unit_from_name("tesla"), dq::Error);
}

TEST_CASE("phantom has the literature values and a dipole field", "[volume_ops]") {
  const dq::Phantom ph = dq::make_head_phantom(64);
  float lo = 1, hi = -1;
  for (float c : ph.chi) {
    lo = std::min(lo, c);
    hi = std::max(hi, c);
  }
  CHECK(lo == Approx(-0.03f));
  CHECK(hi == Approx(0.35f));
  double energy = 0;
  for (float f : ph.field) energy += static_cast<double>(f) * f;
  CHECK(energy > 0);
}

TEST_CASE("the detailed phantom: folds, sulci, texture and small veins on the same brain",
          "[volume_ops]") {
  const dq::Phantom plain = dq::make_head_phantom(80);
  const dq::Phantom a = dq::make_head_phantom(80, 3), again = dq::make_head_phantom(80, 3),
                    other = dq::make_head_phantom(80, 4);
  CHECK(a.chi == again.chi);  // a seed is a phantom
  CHECK(a.field == again.field);
  CHECK(a.chi != other.chi);
  CHECK(a.mask == plain.mask);  // the brain's outline does not move
  size_t changed = 0, vein = 0, csf_added = 0, outside_touched = 0;
  float lo = 1, hi = -1;
  for (size_t i = 0; i < a.chi.size(); ++i) {
    if (!a.mask[i]) {
      outside_touched += a.chi[i] != 0.0f;
      continue;
    }
    changed += a.chi[i] != plain.chi[i];
    vein += a.chi[i] >= 0.25f && plain.chi[i] < 0.25f;       // a new vessel
    csf_added += a.chi[i] == 0.0f && plain.chi[i] == 0.02f;  // a sulcus through the cortex
    lo = std::min(lo, a.chi[i]);
    hi = std::max(hi, a.chi[i]);
  }
  INFO("changed " << changed << ", vein " << vein << ", sulci " << csf_added);
  CHECK(outside_touched == 0);
  CHECK(changed > a.chi.size() / 20);  // texture and folds reach most of the tissue
  CHECK(vein > 100);                   // 80 vessels of 0.5-1.25 mm radius, 2 mm voxels
  CHECK(csf_added > 100);
  CHECK(hi <= 0.45f);  // veins at most 0.45 ppm
  CHECK(lo > -0.1f);   // texture is a few 0.01 ppm around white matter's -0.03
  // The field is the phantom's own dipole field: it changes with the detail.
  CHECK(a.field != plain.field);
}

TEST_CASE("the field's white-noise sd is estimated from its Laplacian", "[volume_ops]") {
  // Pure white noise: the estimate is sigma (median of 40^3-ish |Laplacian| values).
  const dq::Dims3 d{40, 40, 40};
  std::mt19937 rng(3);
  std::normal_distribution<float> g(0.0f, 0.004f);
  std::vector<float> noise(static_cast<size_t>(d.numel()));
  for (float& v : noise) v = g(rng);
  CHECK(dq::estimate_noise_std(noise.data(), nullptr, d) == Approx(0.004).epsilon(0.03));
  // On a dipole field (detailed phantom, 1 mm voxels) the tissue's own Laplacian, confined
  // to chi's edges, barely moves the median: within 15 % of the added noise, and a
  // clean field reads as far below it. (At 2 mm its few-voxel structure reads as
  // about 0.0012 ppm of noise.)
  const dq::Phantom ph = dq::make_head_phantom(160, 1);
  std::vector<float> noisy = ph.field;
  for (size_t i = 0; i < noisy.size(); ++i) noisy[i] += 0.003f * g(rng) / 0.004f;
  const double clean = dq::estimate_noise_std(ph.field.data(), ph.mask.data(), ph.dims);
  const double est = dq::estimate_noise_std(noisy.data(), ph.mask.data(), ph.dims);
  INFO("clean " << clean << ", noisy " << est);
  CHECK(est == Approx(0.003).epsilon(0.15));
  CHECK(clean < 0.0005);
  // Too few voxels with a full neighbourhood inside the mask: no estimate.
  std::vector<uint8_t> tiny(static_cast<size_t>(d.numel()), 0);
  for (int64_t k = 10; k < 14; ++k)
    for (int64_t j = 10; j < 14; ++j)
      for (int64_t i = 10; i < 14; ++i) tiny[static_cast<size_t>((k * 40 + j) * 40 + i)] = 1;
  CHECK(dq::estimate_noise_std(noise.data(), tiny.data(), d) == 0.0);
}
