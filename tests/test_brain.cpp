// Brain-shaped volumes, the in-vivo proxy (synth/brain.h) and the L-curve
// (core/qsm/lcurve.h). The templates come from scripts/prepare-templates.sh,
// which scripts/setup.sh runs; without them these tests fail with its name.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/nn/philox.h"
#include "core/qsm/lcurve.h"
#include "core/qsm/metrics.h"
#include "core/qsm/phantom.h"
#include "synth/brain.h"
#include "synth/synth.h"
#include "test_util.h"
#include "train/config.h"

using Catch::Matchers::Contains;

namespace {

// 64^3 voxels of 2.5 mm: the brain's full 160 mm field of view, cheaply.
dq::Recipe small_brain_recipe() {
  dq::Recipe r;
  r.volume_size = 64;
  r.patch_size = 32;
  r.patches_per_volume = 2;
  r.voxel_mm = {2.5, 2.5, 2.5};
  r.brain_prob = 1.0;
  return r;
}

// Only the tissue: no texture, veins, shapes, background, noise or slices.
dq::Recipe plain_brain_recipe() {
  dq::Recipe r = small_brain_recipe();
  r.brain_texture = 0;
  r.brain_veins_min = r.brain_veins_max = 0;
  r.brain_shapes_min = r.brain_shapes_max = 0;
  r.brain_background = 0;
  return r;
}

std::string parse_error(const std::string& data_json) {
  try {
    dq::parse_train_config("{\"data\": " + data_json + "}", "cfg.json");
  } catch (const dq::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("the templates load and give tissue fractions and seven paired nuclei", "[brain]") {
  const dq::BrainAtlas& a = dq::load_brain_atlas(dq::brain_templates_dir(dq::Recipe{}));
  CHECK(a.nx == 197);
  CHECK(a.ny == 233);
  CHECK(a.nz == 189);
  // About 1.9 L of brain (with CSF) in 1 mm voxels.
  CHECK(a.brain_voxels > 1500000);
  CHECK(a.brain_voxels < 2300000);
  std::vector<int64_t> count(dq::kNuclei + 1, 0), left(dq::kNuclei + 1, 0);
  for (int64_t k = 0; k < a.nz; ++k)
    for (int64_t j = 0; j < a.ny; ++j)
      for (int64_t i = 0; i < a.nx; ++i) {
        const size_t m = static_cast<size_t>((k * a.ny + j) * a.nx + i);
        const float s = a.gm[m] + a.wm[m] + a.csf[m];
        REQUIRE((s == 0.f || std::fabs(s - 1.f) < 1e-5f));
        ++count[a.nucleus[m]];
        if (double(i) < a.origin[0]) ++left[a.nucleus[m]];
      }
  for (int l = 1; l <= dq::kNuclei; ++l) {
    INFO(dq::nucleus_name(l));
    CHECK(count[size_t(l)] > 50);
    // Paired: the symmetric template gives both sides about the same size.
    CHECK(double(left[size_t(l)]) / double(count[size_t(l)]) == Approx(0.5).margin(0.1));
  }
}

TEST_CASE("a missing template folder fails naming the file and the script", "[brain]") {
  dq::Recipe r = small_brain_recipe();
  r.brain_templates = "/nonexistent/mni";
  try {
    dq::generate_volume(r, 1, 0);
    FAIL("no error");
  } catch (const dq::Error& e) {
    CHECK_THAT(std::string(e.what()), Contains("/nonexistent/mni/gm.nii.gz"));
    CHECK_THAT(std::string(e.what()), Contains("scripts/prepare-templates.sh"));
  }
}

TEST_CASE("brain volumes are a pure function of (seed, volume)", "[brain]") {
  const dq::Recipe r = small_brain_recipe();
  const dq::SynthVolume a = dq::generate_volume(r, 7, 3), b = dq::generate_volume(r, 7, 3);
  CHECK(a.chi == b.chi);
  CHECK(a.field == b.field);
  CHECK(a.mask == b.mask);
  const dq::SynthVolume c = dq::generate_volume(r, 7, 4), d = dq::generate_volume(r, 8, 3);
  CHECK(a.chi != c.chi);
  CHECK(a.chi != d.chi);
}

TEST_CASE("brain volumes: shapes, a brain mask, nothing outside it", "[brain]") {
  const dq::Recipe r = small_brain_recipe();
  for (int64_t v = 0; v < 3; ++v) {
    const dq::SynthVolume s = dq::generate_volume(r, 11, v);
    REQUIRE(s.n == 64);
    REQUIRE(s.chi.size() == size_t(64 * 64 * 64));
    REQUIRE(s.field.size() == s.chi.size());
    REQUIRE(s.mask.size() == s.chi.size());
    int64_t inside = 0;
    for (size_t m = 0; m < s.mask.size(); ++m) {
      inside += s.mask[m];
      if (!s.mask[m]) {
        REQUIRE(s.chi[m] == 0.f);
        REQUIRE(s.field[m] == 0.f);
      }
      REQUIRE(std::isfinite(s.chi[m]));
      REQUIRE(std::isfinite(s.field[m]));
    }
    // 1.2-2.2 L of brain at 15.6 mm^3 a voxel, some of it cropped.
    const double litres = double(inside) * 2.5 * 2.5 * 2.5 / 1e6;
    CHECK(litres > 0.6);
    CHECK(litres < 2.6);
  }
  // Patches cut from brain volumes as from paper volumes.
  const dq::PatchSet ps = dq::generate_patches(r, 11, 0, 2);
  CHECK(ps.chi.shape().dims[0] == 4);
}

TEST_CASE("brain volumes: per-tissue chi within the documented ranges", "[brain]") {
  const dq::Recipe r = plain_brain_recipe();
  for (int64_t v = 0; v < 4; ++v) {
    const dq::TissueChi t = dq::draw_tissue_chi(5, v);
    CHECK(t[0] >= -0.02);  // CSF
    CHECK(t[0] <= 0.02);
    CHECK(t[1] >= -0.08);  // white matter
    CHECK(t[1] <= 0.01);
    CHECK(t[2] >= -0.02);  // cortex
    CHECK(t[2] <= 0.08);
    CHECK(t[2 + dq::kPallidus] >= 0.08);
    CHECK(t[2 + dq::kPallidus] <= 0.30);
    // Every voxel is a mix of the volume's values: within their range.
    double lo = 1e9, hi = -1e9;
    for (double x : t) {
      lo = std::min(lo, x);
      hi = std::max(hi, x);
    }
    const dq::SynthVolume s = dq::generate_volume(r, 5, v);
    for (size_t m = 0; m < s.chi.size(); ++m) {
      if (!s.mask[m]) continue;
      REQUIRE(s.chi[m] >= float(std::min(lo, 0.0)) - 1e-6f);
      REQUIRE(s.chi[m] <= float(hi) + 1e-6f);
    }
  }
  // With veins, shapes and haemorrhages the range widens to theirs.
  dq::Recipe rich = small_brain_recipe();
  rich.brain_lesion_prob = 1.0;
  rich.brain_shapes_min = rich.brain_shapes_max = 6;
  rich.brain_shape_mm_min = 10;
  const dq::SynthVolume s = dq::generate_volume(rich, 5, 0);
  const float top = *std::max_element(s.chi.begin(), s.chi.end());
  CHECK(top >= 0.3f);
  CHECK(top <= 3.0f + 0.05f);  // + texture
}

TEST_CASE("brain_prob mixes brain and paper volumes", "[brain]") {
  dq::Recipe r = small_brain_recipe();
  r.brain_prob = 0.0;
  for (int64_t v = 0; v < 50; ++v) REQUIRE_FALSE(dq::volume_is_brain(r, 1, v));
  CHECK(dq::generate_volume(r, 1, 0).mask.empty());
  r.brain_prob = 1.0;
  for (int64_t v = 0; v < 50; ++v) REQUIRE(dq::volume_is_brain(r, 1, v));
  r.brain_prob = 0.5;
  int brains = 0;
  for (int64_t v = 0; v < 400; ++v) brains += dq::volume_is_brain(r, 1, v);
  CHECK(brains > 160);
  CHECK(brains < 240);
  // A paper volume of the mix is the paper recipe's volume, unchanged.
  int64_t paper = 0;
  while (dq::volume_is_brain(r, 1, paper)) ++paper;
  dq::Recipe p = r;
  p.brain_prob = 0;
  CHECK(dq::generate_volume(r, 1, paper).chi == dq::generate_volume(p, 1, paper).chi);
}

TEST_CASE("brain keys parse, round-trip and refuse bad values and unknown keys", "[brain]") {
  const dq::TrainConfig c = dq::parse_train_config(
      R"({"data": {"brain_prob": 0.7, "brain_scale": [0.9, 1.0], "brain_veins": [5, 9],
                   "aniso_prob": 0.25, "aniso_factor": [2, 4], "brain_lesion_chi": [0.5, 2.5]}})",
      "cfg.json");
  CHECK(c.data.brain_prob == 0.7);
  CHECK(c.data.brain_scale_min == 0.9);
  CHECK(c.data.brain_veins_max == 9);
  CHECK(c.data.aniso_factor_max == 4);
  CHECK(c.data.brain_lesion_chi_max == 2.5);
  CHECK_THAT(parse_error(R"({"brain_probb": 0.5})"), Contains("brain_probb"));
  CHECK_THAT(parse_error(R"({"brain_prob": 1.5})"), Contains("data.brain_prob"));
  CHECK_THAT(parse_error(R"({"brain_scale": [1.2, 0.9]})"), Contains("data.brain_scale"));
  CHECK_THAT(parse_error(R"({"aniso_factor": [0.5, 2]})"), Contains("data.aniso_factor"));
  CHECK_THAT(parse_error(R"({"brain_veins": [-1, 3]})"), Contains("data.brain_veins"));
  CHECK_THAT(parse_error(R"({"brain_templates": 3})"), Contains("data.brain_templates"));
}

TEST_CASE("thick slices average slabs and keep what is linear along the axis", "[brain]") {
  const int64_t n = 24;
  for (int axis = 0; axis < 3; ++axis) {
    std::vector<float> v(size_t(n * n * n));
    for (int64_t k = 0; k < n; ++k)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < n; ++i) {
          const int64_t c = axis == 0 ? i : axis == 1 ? j : k;
          v[size_t((k * n + j) * n + i)] = 0.5f * float(c) + 2.f;
        }
    const std::vector<float> ramp = v;
    dq::thick_slices(v.data(), n, axis, 2.0);
    // Away from the ends (where the last slab is clamped) a ramp survives.
    for (int64_t k = 2; k < n - 2; ++k)
      for (int64_t j = 2; j < n - 2; ++j)
        for (int64_t i = 2; i < n - 2; ++i)
          REQUIRE(v[size_t((k * n + j) * n + i)] ==
                  Approx(ramp[size_t((k * n + j) * n + i)]).margin(1e-4));
  }
  // A one-voxel spike is spread over the slab: smaller peak, same axis.
  std::vector<float> s(size_t(n * n * n), 0.f);
  s[size_t((12 * n + 12) * n + 12)] = 1.f;
  dq::thick_slices(s.data(), n, 2, 3.0);
  CHECK(s[size_t((12 * n + 12) * n + 12)] < 0.6f);
  CHECK(s[size_t((12 * n + 12) * n + 13)] == 0.f);  // nothing along x
}

TEST_CASE("L-curve: the corner of a curve with a known maximum of curvature", "[lcurve]") {
  // rho = t, eta = a (t - t0)^2: curvature 2a / (1 + 4 a^2 (t - t0)^2)^1.5,
  // largest at t0, whatever the grid's spacing.
  const double t0 = std::log(3e-3), a = 0.8;
  for (int count : {9, 13, 21}) {
    const std::vector<double> lambdas = dq::log_spaced(1e-5, 1.0, count);
    std::vector<dq::LCurvePoint> pts;
    size_t nearest = 0;
    for (size_t i = 0; i < lambdas.size(); ++i) {
      const double t = std::log(lambdas[i]);
      pts.push_back({lambdas[i], std::exp(t), std::exp(a * (t - t0) * (t - t0))});
      if (std::fabs(t - t0) < std::fabs(std::log(lambdas[nearest]) - t0)) nearest = i;
    }
    std::vector<double> kappa;
    CHECK(dq::lcurve_corner(pts, &kappa) == nearest);
    CHECK(kappa.front() == 0.0);
    CHECK(kappa.back() == 0.0);
  }
  // An L of two straight arms joined at lambda 1e-2: the corner is there.
  std::vector<dq::LCurvePoint> L;
  for (double l : dq::log_spaced(1e-5, 1e1, 7)) {
    const double t = std::log10(l) + 2;  // 0 at the joint
    L.push_back({l, std::exp(t > 0 ? t : 0.01 * t), std::exp(t > 0 ? -0.01 * t : -t)});
  }
  CHECK(L[dq::lcurve_corner(L)].lambda == Approx(1e-2));
  std::vector<dq::LCurvePoint> bad = {{1, 1, 1}, {2, 1, 0}, {3, 1, 1}};
  CHECK_THROWS_WITH(dq::lcurve_corner(bad), Contains("zero or negative norm"));
  CHECK_THROWS_WITH(dq::log_spaced(1, 0.5, 5), Contains("0 < lo < hi"));
}

TEST_CASE("L-curve Tikhonov on the head phantom picks an interior lambda near the best",
          "[lcurve]") {
  const dq::Phantom p = dq::make_head_phantom(64);
  const std::vector<double> lambdas = dq::tikhonov_lcurve_lambdas();
  const dq::LCurveResult lc =
      dq::tikhonov_lcurve(p.field.data(), p.mask.data(), p.dims, p.voxel_mm, {0, 0, 1},
                          dq::TikhonovReg::identity, 0.0, 32, lambdas);
  REQUIRE(lc.points.size() == lambdas.size());
  CHECK(lc.corner > 0);
  CHECK(lc.corner + 1 < lambdas.size());
  // The regulariser's norm falls as lambda grows.
  for (size_t i = 1; i < lc.points.size(); ++i)
    CHECK(lc.points[i].regulariser <= lc.points[i - 1].regulariser * (1 + 1e-9));
  // Within a factor of 10 (two grid steps each way) of the lambda that scores best.
  size_t best = 0;
  double best_nrmse = 1e9;
  for (size_t i = 0; i < lambdas.size(); ++i) {
    std::vector<float> chi(p.chi.size());
    dq::tikhonov(p.field.data(), p.mask.data(), p.dims, p.voxel_mm, {0, 0, 1}, lambdas[i],
                 dq::TikhonovReg::identity, 0.0, 32, chi.data());
    const double e = dq::compute_metrics(chi.data(), p.chi.data(), p.mask.data(), p.dims.nz,
                                         p.dims.ny, p.dims.nx, p.voxel_mm)
                         .nrmse;
    if (e < best_nrmse) {
      best_nrmse = e;
      best = i;
    }
  }
  INFO("corner lambda " << lambdas[lc.corner] << ", best " << lambdas[best]);
  CHECK(std::abs(int(lc.corner) - int(best)) <= 3);
}

TEST_CASE("the proxy cases: reproducible, labelled, held out from training", "[brain]") {
  const std::string dir = dq::brain_templates_dir(dq::Recipe{});
  const dq::BrainProxy a = dq::make_brain_proxy(1, dir), b = dq::make_brain_proxy(1, dir);
  CHECK(a.chi == b.chi);
  CHECK(a.field == b.field);
  const dq::BrainProxy c = dq::make_brain_proxy(2, dir);
  CHECK(a.chi != c.chi);
  std::vector<int64_t> count(dq::kNuclei + 1, 0);
  for (size_t m = 0; m < a.labels.size(); ++m) {
    ++count[a.labels[m]];
    if (a.labels[m]) REQUIRE(a.mask[m]);
  }
  for (int l = 1; l <= dq::kNuclei; ++l) CHECK(count[size_t(l)] > 100);
  // Literature values where a nucleus is all tissue, e.g. the pallidus at 0.17.
  double sum = 0;
  int64_t n = 0;
  for (size_t m = 0; m < a.labels.size(); ++m)
    if (a.labels[m] == dq::kPallidus) {
      sum += a.chi[m];
      ++n;
    }
  CHECK(sum / double(n) == Approx(0.17).margin(0.04));
  // Case 2 holds a 1.2 ppm haemorrhage.
  CHECK(*std::max_element(c.chi.begin(), c.chi.end()) == Approx(1.2f).margin(0.02));
  CHECK_THROWS_WITH(dq::make_brain_proxy(3, dir), Contains("proxy case 3"));

  // Held out by construction: a proxy geometry is keyed below kProxyPurpose,
  // a training one below kSynthPurpose, so none of the training sampler's
  // geometries is a proxy's. Checked here over a block of seeds and volumes.
  static_assert(dq::kProxyPurpose != dq::kSynthPurpose, "separate seed spaces");
  dq::Recipe r;
  r.brain_prob = 1;
  std::set<double> proxy_angles;
  for (int w = 1; w <= dq::kProxyCases; ++w)
    proxy_angles.insert(dq::proxy_geometry(w).angle_deg[0]);
  for (uint64_t seed = 0; seed < 20; ++seed)
    for (int64_t v = 0; v < 50; ++v) {
      const dq::BrainGeometry g = dq::draw_brain_geometry(r, seed, v);
      REQUIRE(proxy_angles.count(g.angle_deg[0]) == 0);
      REQUIRE(g.warp_key != dq::proxy_geometry(1).warp_key);
      REQUIRE(g.warp_key != dq::proxy_geometry(2).warp_key);
    }
}

TEST_CASE("deepqsm proxy and invert --lambda lcurve on the command line", "[brain][cli]") {
  dq::test::TempDir dir("brain");
  const std::string f = dir.file("f.nii.gz"), c = dir.file("c.nii.gz"), m = dir.file("m.nii.gz"),
                    l = dir.file("l.nii.gz"), o = dir.file("o.nii.gz");
  const dq::test::Run p = dq::test::run_program(
      dir, DEEPQSM_BINARY,
      "proxy 1 -o '" + f + "' --chi '" + c + "' --mask '" + m + "' --labels '" + l + "'");
  REQUIRE(p.code() == 0);
  CHECK_THAT(p.out, Contains("3 pallidus"));
  const dq::test::Run t = dq::test::run_program(
      dir, DEEPQSM_BINARY,
      "invert tikhonov '" + f + "' -o '" + o + "' --mask '" + m + "' --lambda lcurve");
  REQUIRE(t.code() == 0);
  CHECK_THAT(t.out, Contains("<- corner"));
  CHECK_THAT(t.out, Contains("L-curve corner of 13"));
  const dq::test::Run bad = dq::test::run_program(
      dir, DEEPQSM_BINARY, "invert tikhonov '" + f + "' -o '" + o + "' --lambda curvy");
  CHECK(bad.code() != 0);
  CHECK_THAT(bad.err, Contains("'lcurve'"));
  const dq::test::Run tkd = dq::test::run_program(
      dir, DEEPQSM_BINARY, "invert tkd '" + f + "' -o '" + o + "' --lambda lcurve");
  CHECK(tkd.code() != 0);
  CHECK_THAT(tkd.err, Contains("TKD has no lambda"));
  const dq::test::Run none =
      dq::test::run_program(dir, DEEPQSM_BINARY, "proxy 1 -o '" + f + "' --templates /nonexistent");
  CHECK(none.code() != 0);
  CHECK_THAT(none.err, Contains("prepare-templates.sh"));
}
