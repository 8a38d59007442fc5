// The synthetic-data generator: shape statistics against the recipe's
// distributions, the rasterisation rule, determinism, patch extraction and
// recipe validation.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "core/dipole.h"
#include "core/error.h"
#include "synth/synth.h"

using namespace dq;

namespace {

Recipe small_recipe() {
  Recipe r;
  r.volume_size = 32;
  r.cubes_min = 2;
  r.cubes_max = 6;
  r.spheres_min = 3;
  r.spheres_max = 9;
  r.patch_size = 16;
  r.patches_per_volume = 4;
  return r;
}

int64_t vox(int64_t n, int64_t z, int64_t y, int64_t x) {
  return (z * n + y) * n + x;
}

}  // namespace

TEST_CASE("shape parameters follow the recipe's distributions", "[synth]") {
  const Recipe r = small_recipe();
  const double n = static_cast<double>(r.volume_size);
  const int volumes = 400;
  double cubes = 0, spheres = 0, shapes = 0, size = 0, chi = 0, cube_rank = 0;
  double centre[3] = {0, 0, 0}, centre2[3] = {0, 0, 0};
  float size_lo = 1e9f, size_hi = -1e9f, chi_lo = 1e9f, chi_hi = -1e9f;
  int cubes_first = 0;
  for (int v = 0; v < volumes; ++v) {
    const std::vector<SynthShape> s = draw_shapes(r, 42, v);
    const auto nc = std::count_if(s.begin(), s.end(),
                                  [](const SynthShape& x) { return x.kind == ShapeKind::cube; });
    const auto ns = static_cast<int64_t>(s.size()) - nc;
    REQUIRE(nc >= r.cubes_min);
    REQUIRE(nc <= r.cubes_max);
    REQUIRE(ns >= r.spheres_min);
    REQUIRE(ns <= r.spheres_max);
    cubes += static_cast<double>(nc);
    spheres += static_cast<double>(ns);
    cubes_first += s.front().kind == ShapeKind::cube;
    for (size_t i = 0; i < s.size(); ++i) {
      const SynthShape& x = s[i];
      for (int a = 0; a < 3; ++a) {
        REQUIRE(x.centre[a] >= -0.5f);
        REQUIRE(x.centre[a] <= n - 0.5);
        centre[a] += x.centre[a];
        centre2[a] += x.centre[a] * x.centre[a];
      }
      size_lo = std::min(size_lo, x.size);
      size_hi = std::max(size_hi, x.size);
      chi_lo = std::min(chi_lo, x.chi);
      chi_hi = std::max(chi_hi, x.chi);
      size += x.size;
      chi += x.chi;
      if (x.kind == ShapeKind::cube) cube_rank += static_cast<double>(i) / (s.size() - 1);
      shapes += 1;
    }
  }
  // Standard errors over ~4000 shapes: counts 0.07 and 0.1, size 0.04
  // voxels, chi 0.002 ppm, centre 0.15 voxels, centre variance 1.4 %; the
  // tolerances are about 4 of them.
  CHECK(cubes / volumes == Approx(4.0).margin(0.3));
  CHECK(spheres / volumes == Approx(6.0).margin(0.4));
  CHECK(size_lo >= r.size_min * n);
  CHECK(size_hi <= r.size_max * n);
  CHECK(size / shapes == Approx(0.25 * n).margin(0.25));
  CHECK(chi_lo >= r.chi_min);
  CHECK(chi_hi <= r.chi_max);
  CHECK(chi / shapes == Approx(0.0).margin(0.008));
  for (int a = 0; a < 3; ++a) {
    const double mean = centre[a] / shapes, var = centre2[a] / shapes - mean * mean;
    CHECK(mean == Approx((n - 1) / 2).margin(0.6));
    CHECK(var == Approx(n * n / 12).epsilon(0.06));  // uniform over the extent n
  }
  // Shapes are interleaved, not grouped by kind: a cube's relative position
  // in the painting order averages 1/2, and both kinds come first sometimes
  // (in proportion to their counts, 4 : 6).
  CHECK(cube_rank / cubes == Approx(0.5).margin(0.03));
  CHECK(cubes_first / double(volumes) == Approx(0.4).margin(0.1));
}

TEST_CASE("rasterise follows the stated rule, later shapes on top", "[synth]") {
  Recipe r = small_recipe();
  const int64_t n = r.volume_size;

  SECTION("a single cube and sphere have the expected voxel counts") {
    SynthShape cube;
    cube.kind = ShapeKind::cube;
    cube.centre[0] = cube.centre[1] = cube.centre[2] = 10.0f;
    cube.size = 5.0f;  // |i - 10| <= 2.5: voxels 8..12, 5 per axis
    cube.chi = 0.1f;
    SynthShape ball;
    ball.kind = ShapeKind::sphere;
    ball.centre[0] = 20.0f;
    ball.centre[1] = 21.0f;
    ball.centre[2] = 22.0f;
    ball.size = 6.0f;  // integer points with |d|^2 <= 9: 123
    ball.chi = -0.05f;
    std::vector<float> chi(static_cast<size_t>(n * n * n), 0.0f);
    rasterise(r, {cube, ball}, chi.data());
    CHECK(std::count(chi.begin(), chi.end(), 0.1f) == 125);
    CHECK(std::count(chi.begin(), chi.end(), -0.05f) == 123);
    CHECK(chi[vox(n, 12, 8, 10)] == 0.1f);
    CHECK(chi[vox(n, 13, 10, 10)] == 0.0f);
    CHECK(chi[vox(n, 22, 21, 23)] == -0.05f);
  }
  SECTION("random shapes match a brute-force per-voxel evaluation") {
    r.size_max = 0.9;  // large shapes, many overlapping and crossing the border
    for (int64_t v = 0; v < 5; ++v) {
      const std::vector<SynthShape> s = draw_shapes(r, 7, v);
      std::vector<float> chi(static_cast<size_t>(n * n * n), 0.0f);
      rasterise(r, s, chi.data());
      int64_t mismatches = 0;
      for (int64_t k = 0; k < n; ++k)
        for (int64_t j = 0; j < n; ++j)
          for (int64_t i = 0; i < n; ++i) {
            float want = 0.0f;
            for (const SynthShape& x : s)
              if (shape_contains(x, i, j, k)) want = x.chi;
            mismatches += chi[vox(n, k, j, i)] != want;
          }
      CHECK(mismatches == 0);
    }
  }
}

TEST_CASE("volumes are deterministic in (seed, volume index)", "[synth]") {
  const Recipe r = small_recipe();
  const SynthVolume a = generate_volume(r, 1, 3), b = generate_volume(r, 1, 3);
  const SynthVolume c = generate_volume(r, 1, 4), d = generate_volume(r, 2, 3);
  REQUIRE(a.chi.size() == static_cast<size_t>(32 * 32 * 32));
  CHECK(a.chi == b.chi);
  CHECK(a.field == b.field);
  CHECK(a.chi != c.chi);
  CHECK(a.chi != d.chi);
  // The field is the forward model of chi with the recipe's kernel.
  std::vector<float> f(a.chi.size());
  forward_field(a.chi.data(), {32, 32, 32}, r.voxel_mm, r.b0_dir, r.dipole_k0, r.pad, f.data());
  CHECK(f == a.field);
  CHECK(std::any_of(a.chi.begin(), a.chi.end(), [](float x) { return x != 0.0f; }));
}

TEST_CASE("patches are exact sub-blocks of their volume", "[synth]") {
  Recipe r = small_recipe();
  r.pad = 4;
  const int64_t n = r.volume_size, P = r.patch_size;
  const SynthVolume v = generate_volume(r, 9, 2);
  const int count = 6;
  std::vector<float> field(static_cast<size_t>(count * P * P * P)), chi(field.size());
  cut_patches(r, v, 9, 2, count, field.data(), chi.data());
  for (int p = 0; p < count; ++p) {
    const std::array<int64_t, 3> c = draw_patch_corner(r, 9, 2, p);
    int64_t bad = 0;
    for (int64_t k = 0; k < P; ++k)
      for (int64_t j = 0; j < P; ++j)
        for (int64_t i = 0; i < P; ++i) {
          const size_t dst = static_cast<size_t>(((p * P + k) * P + j) * P + i);
          const size_t src = static_cast<size_t>(vox(n, c[0] + k, c[1] + j, c[2] + i));
          bad += field[dst] != v.field[src] || chi[dst] != v.chi[src];
        }
    CHECK(bad == 0);
  }

  SECTION("corners cover 0 .. n - P and stay inside") {
    int64_t lo = n, hi = -1;
    for (int p = 0; p < 2000; ++p)
      for (int64_t c : draw_patch_corner(r, 9, 2, p)) {
        lo = std::min(lo, c);
        hi = std::max(hi, c);
      }
    CHECK(lo == 0);
    CHECK(hi == n - P);
  }
}

TEST_CASE("generate_patches concatenates volumes in order", "[synth]") {
  const Recipe r = small_recipe();
  const int64_t P = r.patch_size, per = r.patches_per_volume, block = per * P * P * P;
  const PatchSet s = generate_patches(r, 5, 10, 2);
  REQUIRE(s.field.shape() == Shape{2 * per, P, P, P, 1});
  REQUIRE(s.chi.shape() == s.field.shape());
  for (int64_t v = 0; v < 2; ++v) {
    const SynthVolume vol = generate_volume(r, 5, 10 + v);
    std::vector<float> field(static_cast<size_t>(block)), chi(field.size());
    cut_patches(r, vol, 5, 10 + v, r.patches_per_volume, field.data(), chi.data());
    CHECK(std::equal(field.begin(), field.end(), s.field.f32() + v * block));
    CHECK(std::equal(chi.begin(), chi.end(), s.chi.f32() + v * block));
  }
  // A sub-range regenerates the same patches (resumable, splittable).
  const PatchSet t = generate_patches(r, 5, 11, 1);
  CHECK(std::equal(t.chi.f32(), t.chi.f32() + block, s.chi.f32() + block));
  CHECK(generate_patches(r, 5, 0, 0).field.shape() == Shape{0, P, P, P, 1});
}

TEST_CASE("invalid recipes are refused", "[synth]") {
  Recipe r = small_recipe();
  r.patch_size = 40;
  CHECK_THROWS_AS(generate_patches(r, 1, 0, 1), Error);
  r = small_recipe();
  r.cubes_min = 7;
  CHECK_THROWS_AS(generate_patches(r, 1, 0, 1), Error);
  r = small_recipe();
  r.size_min = 0.0;
  CHECK_THROWS_AS(generate_patches(r, 1, 0, 1), Error);
  r = small_recipe();
  r.chi_min = 0.3;
  CHECK_THROWS_AS(generate_patches(r, 1, 0, 1), Error);
  r = small_recipe();
  CHECK_THROWS_AS(generate_patches(r, 1, -1, 1), Error);
}

TEST_CASE("the paper recipe generates a 160^3 volume", "[synth]") {
  const Recipe r;  // defaults: 160^3, 80-120 cubes and spheres
  const SynthVolume v = generate_volume(r, 2019, 0);
  REQUIRE(v.n == 160);
  const auto [lo, hi] = std::minmax_element(v.chi.begin(), v.chi.end());
  CHECK(*lo >= r.chi_min);
  CHECK(*hi <= r.chi_max);
  // With 160-240 shapes of 10-40 % of the side almost all of the volume is covered.
  const auto zeros = std::count(v.chi.begin(), v.chi.end(), 0.0f);
  CHECK(zeros < static_cast<long>(v.chi.size() / 4));
  CHECK(std::all_of(v.field.begin(), v.field.end(), [](float x) { return std::isfinite(x); }));
}
