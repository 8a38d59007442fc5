// The synthetic-data generator: shape statistics against the recipe's
// distributions, the rasterisation rule, determinism, patch extraction and
// recipe validation.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/qsm/dipole.h"
#include "synth/recipe_json.h"
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

// chi painted voxel by voxel from shape_contains: the rule, without the
// rasteriser's bounding boxes and separable cube fill.
std::vector<float> brute_force_chi(const Recipe& r, const std::vector<SynthShape>& s) {
  const int64_t n = r.volume_size;
  const std::array<float, 3> v = raster_voxel_mm(r);
  std::vector<float> chi(static_cast<size_t>(n * n * n), 0.0f);
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < n; ++i) {
        float& c = chi[static_cast<size_t>(vox(n, k, j, i))];
        for (const SynthShape& x : s)
          if (shape_contains(x, v, i, j, k)) c = r.additive ? c + x.chi : x.chi;
      }
  return chi;
}

std::vector<float> rasterised(const Recipe& r, const std::vector<SynthShape>& s) {
  const int64_t n = r.volume_size;
  std::vector<float> chi(static_cast<size_t>(n * n * n), 0.0f);
  rasterise(r, s, chi.data());
  return chi;
}

double angle_deg(const Vec3& a, const Vec3& b) {
  const double c = a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  return std::acos(std::min(1.0, std::max(-1.0, c))) * 180.0 / M_PI;
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
      CHECK(x.size[1] == x.size[0]);  // cubes and spheres: one size
      CHECK(x.size[2] == x.size[0]);
      size_lo = std::min(size_lo, x.size[0]);
      size_hi = std::max(size_hi, x.size[0]);
      chi_lo = std::min(chi_lo, x.chi);
      chi_hi = std::max(chi_hi, x.chi);
      size += x.size[0];
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
    cube.size[0] = cube.size[1] = cube.size[2] = 5.0f;  // |i - 10| <= 2.5: voxels 8..12
    cube.chi = 0.1f;
    SynthShape ball;
    ball.kind = ShapeKind::sphere;
    ball.centre[0] = 20.0f;
    ball.centre[1] = 21.0f;
    ball.centre[2] = 22.0f;
    ball.size[0] = ball.size[1] = ball.size[2] = 6.0f;  // integer points with |d|^2 <= 9: 123
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
              if (shape_contains(x, {1.0f, 1.0f, 1.0f}, i, j, k)) want = x.chi;
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

// ---- options beyond the paper

TEST_CASE("rectangles: boxes with three independent sides", "[synth]") {
  Recipe r = small_recipe();
  r.rects_min = 3;
  r.rects_max = 5;
  const double n = static_cast<double>(r.volume_size);
  double boxes = 0, unequal = 0, side_sum[3] = {0, 0, 0};
  const int volumes = 300;
  for (int v = 0; v < volumes; ++v) {
    const std::vector<SynthShape> s = draw_shapes(r, 11, v);
    int nb = 0;
    for (const SynthShape& x : s) {
      if (x.kind != ShapeKind::box) continue;
      ++nb;
      for (int a = 0; a < 3; ++a) {
        REQUIRE(x.size[a] >= r.size_min * n);
        REQUIRE(x.size[a] <= r.size_max * n);
        side_sum[a] += x.size[a];
      }
      unequal += x.size[0] != x.size[1] && x.size[1] != x.size[2] && x.size[0] != x.size[2];
    }
    REQUIRE(nb >= 3);
    REQUIRE(nb <= 5);
    boxes += nb;
  }
  CHECK(boxes / volumes == Approx(4.0).margin(0.2));
  CHECK(unequal == boxes);
  for (int a = 0; a < 3; ++a) CHECK(side_sum[a] / boxes == Approx(0.25 * n).margin(0.3));

  // Cubes and spheres are drawn exactly as without boxes where their
  // counters coincide: the first volume's cube and sphere counts agree.
  Recipe plain = small_recipe();
  const auto count = [](const std::vector<SynthShape>& s, ShapeKind k) {
    return std::count_if(s.begin(), s.end(), [k](const SynthShape& x) { return x.kind == k; });
  };
  const auto a = draw_shapes(r, 11, 0), b = draw_shapes(plain, 11, 0);
  CHECK(count(a, ShapeKind::cube) == count(b, ShapeKind::cube));
  CHECK(count(a, ShapeKind::sphere) == count(b, ShapeKind::sphere));

  SECTION("boxes rasterise by the rule, also with anisotropic voxels") {
    r.size_max = 0.8;
    r.voxel_mm = {0.8, 1.0, 1.7};
    for (int64_t v = 0; v < 3; ++v) {
      const auto s = draw_shapes(r, 3, v);
      CHECK(rasterised(r, s) == brute_force_chi(r, s));
    }
  }
}

TEST_CASE("additive shapes sum where they overlap", "[synth]") {
  Recipe r = small_recipe();
  r.additive = true;
  r.size_max = 0.8;
  const auto s = draw_shapes(r, 4, 1);
  const std::vector<float> chi = rasterised(r, s);
  CHECK(chi == brute_force_chi(r, s));
  // Overlaps make values that are no single shape's chi.
  const auto sums = std::count_if(chi.begin(), chi.end(), [&](float c) {
    return c != 0.0f &&
           std::none_of(s.begin(), s.end(), [c](const SynthShape& x) { return x.chi == c; });
  });
  CHECK(sums > 0);
  Recipe over = r;
  over.additive = false;
  CHECK(draw_shapes(over, 4, 1).size() == s.size());
  CHECK(rasterised(over, s) != chi);
}

TEST_CASE("chi distributions: uniform, normal, discrete", "[synth]") {
  Recipe r = small_recipe();
  std::vector<float> chis;
  const auto collect = [&](const Recipe& rr) {
    chis.clear();
    for (int v = 0; v < 300; ++v)
      for (const SynthShape& x : draw_shapes(rr, 21, v)) chis.push_back(x.chi);
  };
  SECTION("normal") {
    r.chi_dist = "normal";
    r.chi_mean = 0.05;
    r.chi_std = 0.1;
    collect(r);
    double m = 0, m2 = 0;
    for (float c : chis) m += c;
    m /= static_cast<double>(chis.size());
    for (float c : chis) m2 += (c - m) * (c - m);
    const double sd = std::sqrt(m2 / static_cast<double>(chis.size()));
    // ~3000 draws: standard errors 0.002 (mean) and 1.3 % (std).
    CHECK(m == Approx(0.05).margin(0.007));
    CHECK(sd == Approx(0.1).epsilon(0.05));
    const auto beyond = std::count_if(chis.begin(), chis.end(), [](float c) {
      return std::fabs(c - 0.05) > 0.2;  // 2 sigma: 4.6 %
    });
    CHECK(static_cast<double>(beyond) / chis.size() == Approx(0.0455).margin(0.015));
  }
  SECTION("discrete") {
    r.chi_dist = "discrete";
    r.chi_values = {-0.1, 0.0, 0.3};
    collect(r);
    int counts[3] = {0, 0, 0};
    for (float c : chis) {
      const bool known = c == -0.1f || c == 0.0f || c == 0.3f;
      REQUIRE(known);
      counts[c == -0.1f ? 0 : c == 0.0f ? 1 : 2]++;
    }
    for (int c : counts) CHECK(c / double(chis.size()) == Approx(1.0 / 3).margin(0.04));
  }
  SECTION("uniform is the paper's draw") {
    collect(r);
    std::vector<float> a = chis;
    r.chi_dist = "uniform";
    r.chi_mean = 7;  // ignored unless "normal"
    collect(r);
    CHECK(a == chis);
  }
}

TEST_CASE("lesions: a wider chi range with a probability", "[synth]") {
  Recipe r = small_recipe();
  r.lesion_prob = 0.2;
  r.lesion_chi_min = 0.5;
  r.lesion_chi_max = 1.5;
  double lesions = 0, shapes = 0;
  for (int v = 0; v < 300; ++v)
    for (const SynthShape& x : draw_shapes(r, 8, v)) {
      shapes += 1;
      if (x.chi >= 0.5f) {
        lesions += 1;
        REQUIRE(x.chi <= 1.5f);
      } else {
        REQUIRE(x.chi >= r.chi_min);
        REQUIRE(x.chi <= r.chi_max);
      }
    }
  CHECK(lesions / shapes == Approx(0.2).margin(0.03));
  // A non-lesion shape keeps the chi it would have without the option.
  const auto a = draw_shapes(r, 8, 0);
  const auto b = draw_shapes(small_recipe(), 8, 0);
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].chi < 0.5f) CHECK(a[i].chi == b[i].chi);
}

TEST_CASE("B0 direction drawn per volume within a cone", "[synth]") {
  Recipe r = small_recipe();
  r.b0_dir = {0.0, std::sqrt(0.5), std::sqrt(0.5)};
  CHECK(volume_b0(r, 1, 0) == r.b0_dir);  // cone 0: exactly b0_dir
  r.b0_cone_deg = 20;
  const double cos_a = std::cos(20 * M_PI / 180);
  double mean_cos = 0;
  Vec3 mean_dir{0, 0, 0};
  const int volumes = 4000;
  for (int v = 0; v < volumes; ++v) {
    const Vec3 b = volume_b0(r, 1, v);
    REQUIRE(std::sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2]) == Approx(1.0).epsilon(1e-12));
    REQUIRE(angle_deg(b, r.b0_dir) <= 20.0 + 1e-9);
    mean_cos += b[0] * r.b0_dir[0] + b[1] * r.b0_dir[1] + b[2] * r.b0_dir[2];
    for (size_t a = 0; a < 3; ++a) mean_dir[a] += b[a] / volumes;
  }
  // Uniform over the cap: cos(theta) ~ U(cos a, 1); the mean direction is the axis.
  CHECK(mean_cos / volumes == Approx((1 + cos_a) / 2).margin(0.001));
  const double len =
      std::sqrt(mean_dir[0] * mean_dir[0] + mean_dir[1] * mean_dir[1] + mean_dir[2] * mean_dir[2]);
  CHECK(angle_deg({mean_dir[0] / len, mean_dir[1] / len, mean_dir[2] / len}, r.b0_dir) < 0.5);
  CHECK(volume_b0(r, 1, 5) == volume_b0(r, 1, 5));
  CHECK(volume_b0(r, 1, 5) != volume_b0(r, 2, 5));

  // The volume's field is the forward model with its own direction.
  const SynthVolume v = generate_volume(r, 1, 3);
  CHECK(v.b0 == volume_b0(r, 1, 3));
  std::vector<float> f(v.chi.size());
  forward_field(v.chi.data(), {32, 32, 32}, r.voxel_mm, v.b0, r.dipole_k0, r.pad, f.data());
  CHECK(f == v.field);
}

TEST_CASE("anisotropic voxels: shapes are sized in mm", "[synth]") {
  Recipe r = small_recipe();
  r.voxel_mm = {1.0, 1.0, 2.0};
  CHECK(r.size_reference_mm() == 32.0);  // the shortest side: 32 voxels of 1 mm
  SynthShape ball;
  ball.kind = ShapeKind::sphere;
  ball.centre[0] = ball.centre[1] = ball.centre[2] = 15.0f;
  ball.size[0] = ball.size[1] = ball.size[2] = 12.0f;  // 12 mm diameter
  ball.chi = 0.1f;
  const std::vector<float> chi = rasterised(r, {ball});
  int64_t x_extent = 0, z_extent = 0;
  for (int64_t i = 0; i < 32; ++i) x_extent += chi[vox(32, 15, 15, i)] != 0.0f;
  for (int64_t k = 0; k < 32; ++k) z_extent += chi[vox(32, k, 15, 15)] != 0.0f;
  CHECK(x_extent == 13);  // |i - 15| <= 6 mm at 1 mm
  CHECK(z_extent == 7);   // |k - 15| * 2 <= 6 mm
  // Drawn sizes scale with the reference length, not the voxel count.
  for (const SynthShape& x : draw_shapes(r, 2, 0)) {
    CHECK(x.size[0] >= 0.1 * 32.0);
    CHECK(x.size[0] <= 0.4 * 32.0);
  }
  r.voxel_mm = {0.5, 0.5, 0.5};
  CHECK(r.size_reference_mm() == 16.0);
  const auto s = draw_shapes(r, 2, 0);
  CHECK(rasterised(r, s) == brute_force_chi(r, s));
  // The same shapes, counted in voxels, as with 1 mm voxels.
  CHECK(rasterised(r, s) == rasterised(small_recipe(), draw_shapes(small_recipe(), 2, 0)));
}

TEST_CASE("Gaussian noise on the field", "[synth]") {
  Recipe r = small_recipe();
  const SynthVolume clean = generate_volume(r, 6, 2);
  r.noise_std = 0.01;
  const SynthVolume noisy = generate_volume(r, 6, 2), again = generate_volume(r, 6, 2);
  CHECK(noisy.chi == clean.chi);  // noise touches the field only
  CHECK(noisy.field == again.field);
  double m = 0, m2 = 0;
  const double count = static_cast<double>(clean.field.size());
  for (size_t i = 0; i < clean.field.size(); ++i) {
    const double d = noisy.field[i] - clean.field[i];
    m += d;
    m2 += d * d;
  }
  m /= count;
  // 32768 voxels: standard errors 5.5e-5 ppm (mean) and 0.4 % (std).
  CHECK(m == Approx(0).margin(2.5e-4));
  CHECK(std::sqrt(m2 / count - m * m) == Approx(0.01).epsilon(0.02));
  const SynthVolume other = generate_volume(r, 6, 3);
  CHECK(other.field != noisy.field);
  CHECK(synth_gauss(5, 0) == synth_gauss(5, 0));
}

TEST_CASE("a noise range: each volume draws its own level", "[synth]") {
  Recipe r = small_recipe();
  r.noise_std = 0.001;
  r.noise_std_max = 0.02;
  r.validate();
  std::vector<double> levels;
  for (int64_t v = 0; v < 8; ++v) {
    const double sd = volume_noise_std(r, 6, v);
    CHECK(sd >= 0.001);
    CHECK(sd < 0.02);
    CHECK(sd == volume_noise_std(r, 6, v));
    levels.push_back(sd);
  }
  std::sort(levels.begin(), levels.end());
  CHECK(std::unique(levels.begin(), levels.end()) == levels.end());
  CHECK(levels.back() - levels.front() > 0.005);  // 8 draws spread over the range
  // The field carries exactly the drawn level: std of (noisy - clean).
  const SynthVolume noisy = generate_volume(r, 6, 3);
  Recipe fixed = r;
  fixed.noise_std = fixed.noise_std_max = 0;
  const SynthVolume clean = generate_volume(fixed, 6, 3);
  CHECK(noisy.chi == clean.chi);
  double m2 = 0;
  for (size_t i = 0; i < clean.field.size(); ++i) {
    const double d = noisy.field[i] - clean.field[i];
    m2 += d * d;
  }
  CHECK(std::sqrt(m2 / static_cast<double>(clean.field.size())) ==
        Approx(volume_noise_std(r, 6, 3)).epsilon(0.02));
  // Without a range the level is noise_std for every volume, as before.
  fixed.noise_std = 0.003;
  CHECK(volume_noise_std(fixed, 6, 3) == 0.003);
  r.noise_std_max = 0.0005;  // below the minimum
  CHECK_THROWS_WITH(r.validate(), Catch::Contains("data.noise_std"));
}

TEST_CASE("a brain-like region: sources and field only inside an ellipsoid", "[synth]") {
  Recipe r = small_recipe();
  const int64_t n = r.volume_size;
  const SynthVolume whole = generate_volume(r, 8, 1);
  r.region_prob = 1.0;
  r.region_size_min = 0.3;
  r.region_size_max = 0.4;
  r.noise_std = 0.001;
  const SynthVolume v = generate_volume(r, 8, 1);
  const SynthRegion g = draw_region(r, 8, 1);
  REQUIRE(g.active);
  for (int a = 0; a < 3; ++a) {
    CHECK(std::fabs(g.centre[a] - (n - 1) / 2.0) <= 0.1 * n + 1e-4);
    CHECK(1.0 / g.inv_axis[a] >= 0.3 * n - 1e-3);
    CHECK(1.0 / g.inv_axis[a] <= 0.4 * n + 1e-3);
  }
  // chi is the whole volume's chi inside and 0 outside; the field is 0
  // outside and the field of the masked chi (plus noise) inside.
  std::vector<float> chi_in = whole.chi;
  int64_t inside = 0;
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < n; ++i) {
        const size_t m = static_cast<size_t>((k * n + j) * n + i);
        if (region_contains(g, i, j, k)) {
          ++inside;
          REQUIRE(v.chi[m] == whole.chi[m]);
        } else {
          chi_in[m] = 0.0f;
          REQUIRE(v.chi[m] == 0.0f);
          REQUIRE(v.field[m] == 0.0f);
        }
      }
  // A fraction of an ellipsoid of these semi-axes: 4/3 pi abc / n^3 in [0.11, 0.27].
  CHECK(inside > 0.1 * n * n * n);
  CHECK(inside < 0.3 * n * n * n);
  std::vector<float> field(chi_in.size());
  forward_field(chi_in.data(), {n, n, n}, r.voxel_mm, r.b0_dir, r.dipole_k0, r.pad, field.data());
  double err = 0, ref = 0;
  for (size_t m = 0; m < field.size(); ++m)
    if (v.field[m] != 0.0f) {
      err += (v.field[m] - field[m]) * (v.field[m] - field[m]);
      ref += field[m] * field[m];
    }
  CHECK(std::sqrt(err / ref) < 0.2);  // the 0.001 ppm noise, nothing else
  CHECK(std::sqrt(err / ref) > 0.001);

  // The coin: about region_prob of the volumes, and the paper's volumes
  // unchanged when it comes up tails.
  r.region_prob = 0.3;
  int heads = 0;
  for (int64_t vol = 0; vol < 400; ++vol) heads += draw_region(r, 8, vol).active;
  CHECK(heads / 400.0 == Approx(0.3).margin(0.07));
  r.region_prob = 0.0;
  CHECK_FALSE(draw_region(r, 8, 1).active);
}

TEST_CASE("options are off in the paper recipe and round-trip through JSON", "[synth]") {
  const Recipe paper;
  CHECK(paper.rects_max == 0);
  CHECK_FALSE(paper.additive);
  CHECK(paper.chi_dist == "uniform");
  CHECK(paper.b0_cone_deg == 0);
  CHECK(paper.noise_std == 0);
  CHECK(paper.lesion_prob == 0);
  CHECK(paper.region_prob == 0);

  Recipe r;
  r.rects_min = 1;
  r.rects_max = 4;
  r.additive = true;
  r.chi_dist = "discrete";
  r.chi_values = {0.1, -0.2};
  r.chi_mean = 0.01;
  r.chi_std = 0.02;
  r.b0_cone_deg = 15;
  r.noise_std = 0.003;
  r.lesion_prob = 0.1;
  r.lesion_chi_min = 0.3;
  r.lesion_chi_max = 2.0;
  r.region_prob = 0.7;
  r.region_size_min = 0.2;
  r.region_size_max = 0.3;
  const auto j = recipe_to_json(r);
  Recipe back;
  for (const auto& [key, value] : j.items()) REQUIRE(read_recipe_key(back, key, value, key));
  CHECK(recipe_to_json(back) == j);
  CHECK(j.size() == recipe_keys().size());
  CHECK(j["noise_std"] == 0.003);  // a fixed level stays a number
  r.noise_std_max = 0.01;          // a range is written as [min, max] and read back
  const auto jr = recipe_to_json(r);
  CHECK(jr["noise_std"].dump() == "[0.003,0.01]");
  Recipe back_range;
  REQUIRE(read_recipe_key(back_range, "noise_std", jr["noise_std"], "data.noise_std"));
  CHECK(back_range.noise_std == 0.003);
  CHECK(back_range.noise_std_max == 0.01);
  CHECK_THROWS_AS(read_recipe_key(back, "chi_values", json("x"), "data.chi_values"), Error);
  CHECK_THROWS_AS(read_recipe_key(back, "additive", json(1), "data.additive"), Error);
}

TEST_CASE("invalid option values are refused with the key's name", "[synth]") {
  const auto refused = [](const std::function<void(Recipe&)>& edit, const std::string& key) {
    Recipe r = small_recipe();
    edit(r);
    try {
      r.validate();
    } catch (const Error& e) {
      INFO(e.what());
      CHECK(std::string(e.what()).find(key) != std::string::npos);
      return;
    }
    FAIL("accepted an invalid " << key);
  };
  refused([](Recipe& r) { r.rects_min = -1; }, "data.rectangles");
  refused([](Recipe& r) { r.rects_min = 4, r.rects_max = 2; }, "data.rectangles");
  refused([](Recipe& r) { r.chi_dist = "gamma"; }, "data.chi_dist");
  refused([](Recipe& r) { r.chi_dist = "normal", r.chi_std = -0.1; }, "data.chi_std");
  refused([](Recipe& r) { r.chi_dist = "normal", r.chi_mean = NAN; }, "data.chi_mean");
  refused([](Recipe& r) { r.chi_dist = "discrete"; }, "data.chi_values");
  refused([](Recipe& r) { r.chi_dist = "discrete", r.chi_values = {INFINITY}; }, "data.chi_values");
  refused([](Recipe& r) { r.b0_cone_deg = -1; }, "data.b0_cone_deg");
  refused([](Recipe& r) { r.b0_cone_deg = 181; }, "data.b0_cone_deg");
  refused([](Recipe& r) { r.noise_std = -0.01; }, "data.noise_std");
  refused([](Recipe& r) { r.lesion_prob = 1.5; }, "data.lesion_prob");
  refused([](Recipe& r) { r.lesion_chi_min = 2, r.lesion_chi_max = 1; }, "data.lesion_chi");
  refused([](Recipe& r) { r.region_prob = -0.1; }, "data.region_prob");
  refused([](Recipe& r) { r.region_size_max = 0.6; }, "data.region_size");
  refused([](Recipe& r) { r.region_size_min = 0; }, "data.region_size");
  refused([](Recipe& r) { r.cubes_max = r.cubes_min = 0, r.spheres_max = r.spheres_min = 0; },
          "empty counts");
  // Boxes alone are enough to fill a volume.
  Recipe boxes_only = small_recipe();
  boxes_only.cubes_min = boxes_only.cubes_max = boxes_only.spheres_min = boxes_only.spheres_max = 0;
  boxes_only.rects_min = boxes_only.rects_max = 2;
  CHECK_NOTHROW(boxes_only.validate());
}
