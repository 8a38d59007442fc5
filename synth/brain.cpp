// Brain-shaped volumes and the in-vivo proxy (synth/brain.h). Distributions
// and their sources: docs/config.md, "Brain-shaped volumes".
#include "synth/brain.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>

#include "core/error.h"
#include "core/io/nifti_io.h"
#include "core/nn/philox.h"
#include "core/qsm/dipole.h"

#ifndef DEEPQSM_SOURCE_DIR
#define DEEPQSM_SOURCE_DIR "."
#endif

namespace dq {

namespace {

constexpr double kPi = 3.14159265358979323846;

// Uniform and normal draws, in order, under one key (counter = draw number).
struct Draws {
  uint64_t key;
  uint64_t next = 0;
  explicit Draws(uint64_t k) : key(k) {}
  double u(double lo, double hi) { return lo + (hi - lo) * philox_uniform(key, next++); }
  int64_t i(int64_t lo, int64_t hi) {  // {lo, ..., hi}
    return std::min(hi, lo + static_cast<int64_t>(std::floor(u(0, 1) * double(hi - lo + 1))));
  }
  double normal() {
    const double u1 = 1.0 - u(0, 1), u2 = u(0, 1);
    return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
  }
  std::array<double, 3> direction() {
    const double cz = u(-1, 1), phi = u(0, 2 * kPi), s = std::sqrt(1 - cz * cz);
    return {s * std::cos(phi), s * std::sin(phi), cz};
  }
};

// Deep nuclei as ellipsoids in MNI152 mm (x right, y anterior, z superior),
// centre and semi-axes, mirrored in x; voxels inside with CSF fraction
// below 0.5 get the label. Centres and extents read off the ICBM 2009
// template's anatomy and the usual MNI atlases (Harvard-Oxford subcortical,
// Keuken et al. 2014 for the midbrain nuclei, Diedrichsen et al. 2011 for
// the dentate); a few mm of error only moves the ROI boundary.
struct NucleusShape {
  Nucleus label;
  double c[3], a[3];
};
const NucleusShape kNucleusShapes[] = {
    {kCaudate, {13, 12, 10}, {4.5, 11, 8}}, {kPutamen, {25, 2, 1}, {5, 14, 8}},
    {kThalamus, {11, -18, 7}, {7, 12, 7}},  {kPallidus, {19, -3, -1}, {3.5, 7, 4.5}},
    {kNigra, {11, -18, -11}, {3, 6, 2.5}},  {kRedNucleus, {5, -20, -8}, {3, 3, 3}},
    {kDentate, {15, -57, -35}, {6, 8, 6}},
};

Volume read_template(const std::string& dir, const char* name) {
  const std::string path = dir + "/" + name + ".nii.gz";
  if (!std::ifstream(path).good())
    fail(path, ": missing MNI152 template; run scripts/prepare-templates.sh (or set ",
         "data.brain_templates or $DEEPQSM_TEMPLATES to the folder holding gm, wm and t1.nii.gz)");
  Volume v = read_nifti(path);
  if (v.nx != 197 || v.ny != 233 || v.nz != 189)
    fail(path, ": expected the 197x233x189 ICBM 2009a grid of scripts/prepare-templates.sh, got ",
         v.nx, "x", v.ny, "x", v.nz);
  for (double s : v.voxel_mm)
    if (std::fabs(s - 1.0) > 1e-3) fail(path, ": expected 1 mm voxels, got ", s, " mm");
  return v;
}

std::unique_ptr<BrainAtlas> build_atlas(const std::string& dir) {
  const Volume gm = read_template(dir, "gm"), wm = read_template(dir, "wm"),
               t1 = read_template(dir, "t1");
  auto a = std::make_unique<BrainAtlas>();
  a->nx = gm.nx;
  a->ny = gm.ny;
  a->nz = gm.nz;
  // MNI (0, 0, 0) from the affine (diagonal, 1 mm, in every file of the wheel).
  const auto& m = gm.sform_code > 0 ? gm.sform : gm.qform;
  for (int i = 0; i < 3; ++i) {
    if (std::fabs(m[static_cast<size_t>(i * 4 + i)] - 1.0) > 1e-3)
      fail(dir, "/gm.nii.gz: expected an axis-aligned 1 mm affine (RAS)");
    a->origin[static_cast<size_t>(i)] = -m[static_cast<size_t>(i * 4 + 3)];
  }
  const size_t n = gm.data.size();
  float t1max = 0;
  for (float v : t1.data) t1max = std::max(t1max, v);
  if (!(t1max > 0)) fail(dir, "/t1.nii.gz: all zero");
  // The brain is nilearn's load_mni152_brain_mask: the skull-stripped T1
  // above 0.2 of its maximum. Inside it the fractions are the templates'
  // probabilities (renormalised where they add up to more than 1) and CSF
  // the rest; outside, nothing.
  a->gm.assign(n, 0.f);
  a->wm.assign(n, 0.f);
  a->csf.assign(n, 0.f);
  a->nucleus.assign(n, kNoNucleus);
  for (size_t i = 0; i < n; ++i) {
    if (!(t1.data[i] > 0.2f * t1max)) continue;
    float g = std::clamp(gm.data[i] / 255.f, 0.f, 1.f),
          w = std::clamp(wm.data[i] / 255.f, 0.f, 1.f);
    const float s = g + w;
    if (s > 1.f) {
      g /= s;
      w /= s;
    }
    a->gm[i] = g;
    a->wm[i] = w;
    a->csf[i] = std::max(0.f, 1.f - g - w);
    ++a->brain_voxels;
  }
  for (const NucleusShape& s : kNucleusShapes)
    for (double side : {-1.0, 1.0}) {
      const double cx = side * s.c[0] + a->origin[0], cy = s.c[1] + a->origin[1],
                   cz = s.c[2] + a->origin[2];
      for (int64_t k = std::max<int64_t>(0, int64_t(cz - s.a[2]) - 1);
           k <= std::min<int64_t>(a->nz - 1, int64_t(cz + s.a[2]) + 1); ++k)
        for (int64_t j = std::max<int64_t>(0, int64_t(cy - s.a[1]) - 1);
             j <= std::min<int64_t>(a->ny - 1, int64_t(cy + s.a[1]) + 1); ++j)
          for (int64_t i = std::max<int64_t>(0, int64_t(cx - s.a[0]) - 1);
               i <= std::min<int64_t>(a->nx - 1, int64_t(cx + s.a[0]) + 1); ++i) {
            const double u = (double(i) - cx) / s.a[0], v = (double(j) - cy) / s.a[1],
                         w = (double(k) - cz) / s.a[2];
            const size_t m2 = static_cast<size_t>((k * a->ny + j) * a->nx + i);
            if (u * u + v * v + w * w <= 1.0 && a->gm[m2] + a->wm[m2] > 0.5f)
              a->nucleus[m2] = s.label;
          }
    }
  return a;
}

// Rotation about x, then y, then z: R = Rz Ry Rx (row-major 3x3).
std::array<double, 9> rotation(const double deg[3]) {
  const double ax = deg[0] * kPi / 180, ay = deg[1] * kPi / 180, az = deg[2] * kPi / 180;
  const double cx = std::cos(ax), sx = std::sin(ax), cy = std::cos(ay), sy = std::sin(ay),
               cz = std::cos(az), sz = std::sin(az);
  return {cz * cy,
          cz * sy * sx - sz * cx,
          cz * sy * cx + sz * sx,
          sz * cy,
          sz * sy * sx + cz * cx,
          sz * sy * cx - cz * sx,
          -sy,
          cy * sx,
          cy * cx};
}

// A smooth random scalar field: N(0, 1) values on a coarse grid of
// `spacing` mm covering the output grid, trilinearly interpolated.
struct CoarseField {
  double spacing, half;  // mm; the grid spans [-half, half] per axis
  int64_t m;             // points per axis
  std::vector<float> v;  // (m, m, m)
  CoarseField(uint64_t key, uint64_t stream, double spacing_mm, double extent_mm)
      : spacing(spacing_mm), half(extent_mm / 2 + spacing_mm) {
    m = static_cast<int64_t>(std::ceil(2 * half / spacing)) + 1;
    v.resize(static_cast<size_t>(m * m * m));
    for (size_t i = 0; i < v.size(); ++i)
      v[i] = static_cast<float>(synth_gauss(key_for(key, stream), i));
  }
  double at(double x, double y, double z) const {
    const double p[3] = {(x + half) / spacing, (y + half) / spacing, (z + half) / spacing};
    int64_t i0[3];
    double f[3];
    for (int a = 0; a < 3; ++a) {
      const double q = std::clamp(p[a], 0.0, double(m - 1) - 1e-9);
      i0[a] = static_cast<int64_t>(q);
      f[a] = q - double(i0[a]);
    }
    double s = 0;
    for (int c = 0; c < 8; ++c) {
      const int dx = c & 1, dy = (c >> 1) & 1, dz = (c >> 2) & 1;
      const double w = (dx ? f[0] : 1 - f[0]) * (dy ? f[1] : 1 - f[1]) * (dz ? f[2] : 1 - f[2]);
      s += w * v[static_cast<size_t>(((i0[2] + dz) * m + i0[1] + dy) * m + i0[0] + dx)];
    }
    return s;
  }
};

double grid_mm(int64_t i, int64_t n, double vox) {
  return (double(i) - double(n - 1) / 2) * vox;
}

// A vein: a polyline of three segments with a radius; painted where it
// passes through the brain.
struct Tube {
  std::array<double, 3> p[4];  // mm
  double radius, chi;
};

double segment_dist2(const std::array<double, 3>& x, const std::array<double, 3>& a,
                     const std::array<double, 3>& b) {
  double ab[3], ax[3], l2 = 0, t = 0;
  for (int i = 0; i < 3; ++i) {
    ab[i] = b[i] - a[i];
    ax[i] = x[i] - a[i];
    l2 += ab[i] * ab[i];
    t += ab[i] * ax[i];
  }
  t = l2 > 0 ? std::clamp(t / l2, 0.0, 1.0) : 0.0;
  double d2 = 0;
  for (int i = 0; i < 3; ++i) d2 += (ax[i] - t * ab[i]) * (ax[i] - t * ab[i]);
  return d2;
}

struct Grid {
  int64_t n;
  std::array<double, 3> vox;
  size_t at(int64_t i, int64_t j, int64_t k) const { return size_t((k * n + j) * n + i); }
  double mm(int a, int64_t i) const { return grid_mm(i, n, vox[size_t(a)]); }
  double index(int a, double mm) const { return mm / vox[size_t(a)] + double(n - 1) / 2; }
};

// Calls f(i, j, k, x_mm) for the grid voxels within `r` mm of the box [lo, hi] (mm).
template <class F>
void for_box(const Grid& g, const std::array<double, 3>& lo, const std::array<double, 3>& hi,
             double r, F f) {
  int64_t a[3], b[3];
  for (int ax = 0; ax < 3; ++ax) {
    a[ax] = std::max<int64_t>(0, int64_t(std::floor(g.index(ax, lo[size_t(ax)] - r))));
    b[ax] = std::min<int64_t>(g.n - 1, int64_t(std::ceil(g.index(ax, hi[size_t(ax)] + r))));
  }
  for (int64_t k = a[2]; k <= b[2]; ++k)
    for (int64_t j = a[1]; j <= b[1]; ++j)
      for (int64_t i = a[0]; i <= b[0]; ++i)
        f(i, j, k, std::array<double, 3>{g.mm(0, i), g.mm(1, j), g.mm(2, k)});
}

void paint_tube(const Grid& g, const Tube& t, const std::vector<uint8_t>& mask, float* chi) {
  for (int s = 0; s < 3; ++s) {
    std::array<double, 3> lo, hi;
    for (int a = 0; a < 3; ++a) {
      lo[size_t(a)] = std::min(t.p[s][size_t(a)], t.p[s + 1][size_t(a)]);
      hi[size_t(a)] = std::max(t.p[s][size_t(a)], t.p[s + 1][size_t(a)]);
    }
    for_box(g, lo, hi, t.radius,
            [&](int64_t i, int64_t j, int64_t k, const std::array<double, 3>& x) {
              const size_t m = g.at(i, j, k);
              if (mask[m] && segment_dist2(x, t.p[s], t.p[s + 1]) <= t.radius * t.radius)
                chi[m] = static_cast<float>(t.chi);
            });
  }
}

// A random point of the mask (mm), by rejection over the grid; the grid
// centre when none is found in 200 tries.
std::array<double, 3> point_in_mask(const Grid& g, const std::vector<uint8_t>& mask, Draws& d) {
  for (int t = 0; t < 200; ++t) {
    const int64_t i = d.i(0, g.n - 1), j = d.i(0, g.n - 1), k = d.i(0, g.n - 1);
    if (mask[g.at(i, j, k)]) return {g.mm(0, i), g.mm(1, j), g.mm(2, k)};
  }
  return {0, 0, 0};
}

Tube draw_tube(const Grid& g, const std::vector<uint8_t>& mask, Draws& d, double chi_lo,
               double chi_hi) {
  Tube t;
  t.p[0] = point_in_mask(g, mask, d);
  std::array<double, 3> dir = d.direction();
  for (int s = 1; s < 4; ++s) {
    const double len = d.u(5, 20);
    const std::array<double, 3> turn = d.direction();
    for (int a = 0; a < 3; ++a) dir[size_t(a)] += 0.5 * turn[size_t(a)];
    const double l = std::sqrt(dir[0] * dir[0] + dir[1] * dir[1] + dir[2] * dir[2]);
    for (int a = 0; a < 3; ++a)
      t.p[s][size_t(a)] = t.p[s - 1][size_t(a)] + len * dir[size_t(a)] / l;
  }
  t.radius = d.u(0.4, 1.5);
  t.chi = d.u(chi_lo, chi_hi);
  return t;
}

// A cube (side) or sphere (diameter) of `size` mm at `c` (mm), painted in the mask.
void paint_shape(const Grid& g, bool sphere, const std::array<double, 3>& c, double size,
                 double chi, const std::vector<uint8_t>& mask, float* out) {
  const double h = size / 2;
  for_box(g, c, c, h, [&](int64_t i, int64_t j, int64_t k, const std::array<double, 3>& x) {
    const double dx = x[0] - c[0], dy = x[1] - c[1], dz = x[2] - c[2];
    const bool in = sphere ? dx * dx + dy * dy + dz * dz <= h * h
                           : std::fabs(dx) <= h && std::fabs(dy) <= h && std::fabs(dz) <= h;
    const size_t m = g.at(i, j, k);
    if (in && mask[m]) out[m] = static_cast<float>(chi);
  });
}

// chi from the tissue fractions and the per-tissue values.
std::vector<float> tissue_chi(const BrainAnatomy& a, const TissueChi& t) {
  std::vector<float> chi(a.gm.size(), 0.f);
  for (size_t m = 0; m < chi.size(); ++m) {
    if (!a.mask[m]) continue;
    // A nucleus is all its tissue: the templates class much of the pallidus,
    // the nigra and the red nucleus as white matter (they are pale on T1).
    if (a.nucleus[m])
      chi[m] =
          static_cast<float>(a.csf[m] * t[0] + (a.gm[m] + a.wm[m]) * t[size_t(2 + a.nucleus[m])]);
    else
      chi[m] = static_cast<float>(a.csf[m] * t[0] + a.wm[m] * t[1] + a.gm[m] * t[2]);
  }
  return chi;
}

void add_texture(const Grid& g, const BrainAnatomy& a, uint64_t key, double level, double spacing,
                 float* chi) {
  if (level <= 0) return;
  const double extent = double(g.n) * std::max(g.vox[0], std::max(g.vox[1], g.vox[2]));
  const CoarseField tex(key, 0, spacing, extent);
  for (int64_t k = 0; k < g.n; ++k)
    for (int64_t j = 0; j < g.n; ++j)
      for (int64_t i = 0; i < g.n; ++i) {
        const size_t m = g.at(i, j, k);
        // Tissue only: CSF has no texture.
        if (a.mask[m])
          chi[m] += static_cast<float>(level * (1.0 - a.csf[m]) *
                                       tex.at(g.mm(0, i), g.mm(1, j), g.mm(2, k)));
      }
}

void zero_outside(const std::vector<uint8_t>& mask, float* v) {
  for (size_t m = 0; m < mask.size(); ++m)
    if (!mask[m]) v[m] = 0.f;
}

}  // namespace

const char* nucleus_name(int label) {
  static const char* names[] = {"none",     "caudate", "putamen",     "pallidus",
                                "thalamus", "nigra",   "red_nucleus", "dentate"};
  if (label < 1 || label > kNuclei) fail("nucleus label ", label, " is not 1..", kNuclei);
  return names[label];
}

std::string brain_templates_dir(const Recipe& r) {
  if (!r.brain_templates.empty()) return r.brain_templates;
  if (const char* e = std::getenv("DEEPQSM_TEMPLATES"); e && *e) return e;
  return std::string(DEEPQSM_SOURCE_DIR) + "/data/mni152-2009";
}

const BrainAtlas& load_brain_atlas(const std::string& dir) {
  static std::mutex mu;
  static std::map<std::string, std::unique_ptr<BrainAtlas>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(dir);
  if (it == cache.end()) it = cache.emplace(dir, build_atlas(dir)).first;
  return *it->second;
}

bool volume_is_brain(const Recipe& r, uint64_t seed, int64_t volume) {
  if (r.brain_prob <= 0) return false;
  const uint64_t bkey = key_for(synth_volume_key(seed, volume), kSynthBrain);
  return static_cast<double>(philox_uniform(key_for(bkey, 0), 0)) < r.brain_prob;
}

BrainAnatomy sample_anatomy(const BrainAtlas& atlas, const BrainGeometry& g, int64_t n,
                            const std::array<double, 3>& voxel_mm) {
  const Grid grid{n, voxel_mm};
  const std::array<double, 9> R = rotation(g.angle_deg);
  const double extent = double(n) * std::max(voxel_mm[0], std::max(voxel_mm[1], voxel_mm[2]));
  // Three displacement components, each a smooth random field.
  std::unique_ptr<CoarseField> warp[3];
  if (g.warp_mm > 0)
    for (int a = 0; a < 3; ++a)
      warp[a] = std::make_unique<CoarseField>(g.warp_key, uint64_t(a), g.warp_spacing_mm, extent);
  BrainAnatomy out;
  const size_t total = static_cast<size_t>(n * n * n);
  out.gm.assign(total, 0.f);
  out.wm.assign(total, 0.f);
  out.csf.assign(total, 0.f);
  out.nucleus.assign(total, kNoNucleus);
  out.mask.assign(total, 0);
  const int64_t ax = atlas.nx, ay = atlas.ny, az = atlas.nz;
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < n; ++i) {
        double p[3] = {grid.mm(0, i), grid.mm(1, j), grid.mm(2, k)};
        if (g.warp_mm > 0)
          for (int a = 0; a < 3; ++a)
            p[a] += g.warp_mm * warp[a]->at(grid.mm(0, i), grid.mm(1, j), grid.mm(2, k));
        for (int a = 0; a < 3; ++a) p[a] -= g.shift_mm[a];
        // q = F S^-1 R^T p: the template point that lands at p.
        double q[3];
        for (int a = 0; a < 3; ++a) {
          q[a] = (R[size_t(a)] * p[0] + R[size_t(3 + a)] * p[1] + R[size_t(6 + a)] * p[2]) /
                 g.scale[a];
          if (g.flip[a]) q[a] = -q[a];
        }
        const double t[3] = {q[0] + atlas.origin[0], q[1] + atlas.origin[1],
                             q[2] + atlas.origin[2]};
        if (t[0] < 0 || t[1] < 0 || t[2] < 0 || t[0] > double(ax - 1) || t[1] > double(ay - 1) ||
            t[2] > double(az - 1))
          continue;
        const int64_t i0 = std::min<int64_t>(int64_t(t[0]), ax - 2),
                      j0 = std::min<int64_t>(int64_t(t[1]), ay - 2),
                      k0 = std::min<int64_t>(int64_t(t[2]), az - 2);
        const double fx = t[0] - double(i0), fy = t[1] - double(j0), fz = t[2] - double(k0);
        double s[3] = {0, 0, 0};
        for (int c = 0; c < 8; ++c) {
          const int dx = c & 1, dy = (c >> 1) & 1, dz = (c >> 2) & 1;
          const double w = (dx ? fx : 1 - fx) * (dy ? fy : 1 - fy) * (dz ? fz : 1 - fz);
          const size_t src = static_cast<size_t>(((k0 + dz) * ay + j0 + dy) * ax + i0 + dx);
          s[0] += w * atlas.gm[src];
          s[1] += w * atlas.wm[src];
          s[2] += w * atlas.csf[src];
        }
        const size_t m = grid.at(i, j, k);
        out.gm[m] = static_cast<float>(s[0]);
        out.wm[m] = static_cast<float>(s[1]);
        out.csf[m] = static_cast<float>(s[2]);
        out.mask[m] = s[0] + s[1] + s[2] >= 0.5;
        const size_t near = static_cast<size_t>(
            (int64_t(std::lround(t[2])) * ay + int64_t(std::lround(t[1]))) * ax +
            int64_t(std::lround(t[0])));
        if (out.mask[m]) out.nucleus[m] = atlas.nucleus[near];
      }
  return out;
}

BrainGeometry draw_brain_geometry(const Recipe& r, uint64_t seed, int64_t volume) {
  const uint64_t bkey = key_for(synth_volume_key(seed, volume), kSynthBrain);
  Draws d(key_for(bkey, 1));
  BrainGeometry g;
  for (int a = 0; a < 3; ++a) {
    g.flip[a] = d.u(0, 1) < r.brain_flip;
    g.angle_deg[a] = d.u(-r.brain_rotate_deg, r.brain_rotate_deg);
    g.scale[a] = d.u(r.brain_scale_min, r.brain_scale_max);
    g.shift_mm[a] = d.u(-r.brain_shift_mm, r.brain_shift_mm);
  }
  g.warp_mm = d.u(0, r.brain_warp_mm);
  g.warp_spacing_mm = d.u(16, 32);
  g.warp_key = key_for(bkey, 1000);
  return g;
}

TissueChi draw_tissue_chi(uint64_t seed, int64_t volume) {
  // [lo, hi] ppm per tissue: docs/config.md gives the sources.
  static const double range[3 + kNuclei][2] = {
      {-0.02, 0.02},  // CSF
      {-0.08, 0.01},  // white matter
      {-0.02, 0.08},  // cortex
      {0.02, 0.12},   // caudate
      {0.00, 0.15},   // putamen
      {0.08, 0.30},   // globus pallidus
      {-0.02, 0.06},  // thalamus
      {0.05, 0.25},   // substantia nigra
      {0.03, 0.20},   // red nucleus
      {0.03, 0.20},   // dentate
  };
  Draws d(key_for(key_for(synth_volume_key(seed, volume), kSynthBrain), 2));
  TissueChi t;
  for (size_t i = 0; i < t.size(); ++i) t[i] = d.u(range[i][0], range[i][1]);
  return t;
}

TissueChi literature_tissue_chi() {
  // CSF, WM, cortex, caudate, putamen, pallidus, thalamus, nigra, red nucleus,
  // dentate: core/qsm/phantom.cpp's values (Deistung 2013 and others), and
  // the dentate's from Deistung 2013.
  return {0.0, -0.03, 0.02, 0.06, 0.05, 0.17, 0.01, 0.14, 0.10, 0.10};
}

void thick_slices(float* v, int64_t n, int axis, double factor) {
  if (factor <= 1.0) return;
  const int64_t stride = axis == 0 ? 1 : axis == 1 ? n : n * n;
  // Slab s covers [s f - 0.5, (s + 1) f - 0.5) in voxel coordinates, centred at
  // c_s = (s + 0.5) f - 0.5.
  const int64_t slabs = static_cast<int64_t>(std::ceil(double(n) / factor));
  std::vector<double> line(static_cast<size_t>(n)), slab(static_cast<size_t>(slabs));
  for (int64_t a = 0; a < n; ++a)
    for (int64_t b = 0; b < n; ++b) {
      // The line along `axis` through the other two coordinates (a, b).
      const int64_t base = axis == 0 ? (a * n + b) * n : axis == 1 ? a * n * n + b : a * n + b;
      for (int64_t i = 0; i < n; ++i) line[size_t(i)] = v[base + i * stride];
      for (int64_t s = 0; s < slabs; ++s) {
        const double lo = double(s) * factor - 0.5,
                     hi = std::min(double(s + 1) * factor, double(n)) - 0.5;
        double sum = 0, w = 0;
        for (int64_t i = std::max<int64_t>(0, int64_t(std::floor(lo)));
             i < n && double(i) - 0.5 < hi; ++i) {
          const double ov = std::min(hi, double(i) + 0.5) - std::max(lo, double(i) - 0.5);
          if (ov > 0) {
            sum += ov * line[size_t(i)];
            w += ov;
          }
        }
        slab[size_t(s)] = w > 0 ? sum / w : 0;
      }
      for (int64_t i = 0; i < n; ++i) {
        const double c = (double(i) + 0.5) / factor - 0.5;  // in slab units
        const int64_t s0 = std::clamp<int64_t>(int64_t(std::floor(c)), 0, slabs - 1);
        const int64_t s1 = std::min(s0 + 1, slabs - 1);
        const double f = std::clamp(c - double(s0), 0.0, 1.0);
        v[base + i * stride] =
            static_cast<float>((1 - f) * slab[size_t(s0)] + f * slab[size_t(s1)]);
      }
    }
}

SynthVolume generate_brain_volume(const Recipe& r, uint64_t seed, int64_t volume) {
  r.validate();
  const BrainAtlas& atlas = load_brain_atlas(brain_templates_dir(r));
  const int64_t n = r.volume_size;
  const Grid grid{n, r.voxel_mm};
  const uint64_t bkey = key_for(synth_volume_key(seed, volume), kSynthBrain);
  const BrainAnatomy a = sample_anatomy(atlas, draw_brain_geometry(r, seed, volume), n, r.voxel_mm);

  SynthVolume v;
  v.n = n;
  v.chi = tissue_chi(a, draw_tissue_chi(seed, volume));
  {
    Draws d(key_for(bkey, 3));
    const double level = d.u(0, r.brain_texture), spacing = d.u(3, 8);
    add_texture(grid, a, key_for(bkey, 3), level, spacing, v.chi.data());
  }
  {
    Draws d(key_for(bkey, 4));
    const int64_t veins = d.i(r.brain_veins_min, r.brain_veins_max);
    for (int64_t t = 0; t < veins; ++t)
      paint_tube(grid, draw_tube(grid, a.mask, d, 0.2, 0.5), a.mask, v.chi.data());
  }
  {
    Draws d(key_for(bkey, 5));
    const int64_t shapes = d.i(r.brain_shapes_min, r.brain_shapes_max);
    for (int64_t s = 0; s < shapes; ++s) {
      const bool sphere = d.u(0, 1) < 0.5;
      const std::array<double, 3> c = point_in_mask(grid, a.mask, d);
      const double size = d.u(r.brain_shape_mm_min, r.brain_shape_mm_max);
      const bool lesion = d.u(0, 1) < r.brain_lesion_prob;
      const double chi =
          lesion ? d.u(r.brain_lesion_chi_min, r.brain_lesion_chi_max) : d.u(r.chi_min, r.chi_max);
      paint_shape(grid, sphere, c, size, chi, a.mask, v.chi.data());
    }
  }
  zero_outside(a.mask, v.chi.data());

  v.b0 = volume_b0(r, seed, volume);
  v.field.assign(v.chi.size(), 0.f);
  const Dims3 dims{n, n, n};
  forward_field(v.chi.data(), dims, r.voxel_mm, v.b0, r.dipole_k0, r.pad, v.field.data());
  {
    // Residual background field: a random polynomial of degree <= 2 in the
    // grid coordinates (scaled to [-1, 1]), its rms over the brain drawn
    // from [0, brain_background] ppm.
    Draws d(key_for(bkey, 6));
    const double level = d.u(0, r.brain_background);
    double c[10];
    for (double& x : c) x = d.normal();
    std::vector<double> bg(v.field.size(), 0.0);
    double ss = 0;
    int64_t cnt = 0;
    for (int64_t k = 0; k < n; ++k)
      for (int64_t j = 0; j < n; ++j)
        for (int64_t i = 0; i < n; ++i) {
          const size_t m = grid.at(i, j, k);
          if (!a.mask[m]) continue;
          const double x = 2.0 * double(i) / double(n - 1) - 1,
                       y = 2.0 * double(j) / double(n - 1) - 1,
                       z = 2.0 * double(k) / double(n - 1) - 1;
          bg[m] = c[0] + c[1] * x + c[2] * y + c[3] * z + c[4] * x * x + c[5] * y * y +
                  c[6] * z * z + c[7] * x * y + c[8] * x * z + c[9] * y * z;
          ss += bg[m] * bg[m];
          ++cnt;
        }
    const double scale = cnt > 0 && ss > 0 ? level / std::sqrt(ss / double(cnt)) : 0.0;
    for (size_t m = 0; m < bg.size(); ++m) v.field[m] += static_cast<float>(scale * bg[m]);
  }
  add_field_noise(r, seed, volume, v.field.data());
  {
    Draws d(key_for(bkey, 7));
    if (d.u(0, 1) < r.aniso_prob) {
      const int axis = static_cast<int>(d.i(0, 2));
      const double factor = d.u(r.aniso_factor_min, r.aniso_factor_max);
      thick_slices(v.field.data(), n, axis, factor);
      thick_slices(v.chi.data(), n, axis, factor);
    }
  }
  zero_outside(a.mask, v.field.data());
  zero_outside(a.mask, v.chi.data());
  v.mask = a.mask;
  return v;
}

BrainGeometry proxy_geometry(int which) {
  if (which < 1 || which > kProxyCases)
    fail("proxy case ", which, " does not exist (1..", kProxyCases, ")");
  // Held out twice over: the key is below kProxyPurpose, a branch no training
  // volume's key is drawn from, and the ranges are the proxy's own.
  const uint64_t key = key_for(kProxyPurpose, static_cast<uint64_t>(which));
  Draws d(key_for(key, 1));
  BrainGeometry g;
  const double rot = which == 1 ? 5 : 10, warp = which == 1 ? 2.0 : 3.5;
  for (int a = 0; a < 3; ++a) {
    g.angle_deg[a] = d.u(-rot, rot);
    g.scale[a] = d.u(0.88, 0.92);  // the whole brain inside 160 mm
    g.shift_mm[a] = d.u(-3, 3);
  }
  g.warp_mm = warp;
  g.warp_spacing_mm = 24;
  g.warp_key = key_for(key, 1000);
  return g;
}

BrainProxy make_brain_proxy(int which, const std::string& templates_dir) {
  BrainProxy p;
  p.geometry = proxy_geometry(which);
  p.n = 160;
  const Grid grid{p.n, p.voxel_mm};
  const uint64_t key = key_for(kProxyPurpose, static_cast<uint64_t>(which));
  const BrainAnatomy a =
      sample_anatomy(load_brain_atlas(templates_dir), p.geometry, p.n, p.voxel_mm);
  p.chi = tissue_chi(a, literature_tissue_chi());
  // Texture +-0.01 ppm on a 5 mm scale and 40 veins of 0.3-0.45 ppm
  // (deoxygenated blood at Y 0.6-0.7, Haacke et al. 2005).
  add_texture(grid, a, key_for(key, 3), 0.01, 5.0, p.chi.data());
  Draws d(key_for(key, 4));
  for (int t = 0; t < 40; ++t)
    paint_tube(grid, draw_tube(grid, a.mask, d, 0.3, 0.45), a.mask, p.chi.data());
  if (which == 2) {
    // A haemorrhage in white matter: a 14 mm sphere of 1.2 ppm.
    std::array<double, 3> c{0, 0, 0};
    for (int t = 0; t < 500; ++t) {
      c = point_in_mask(grid, a.mask, d);
      const size_t m = grid.at(std::lround(grid.index(0, c[0])), std::lround(grid.index(1, c[1])),
                               std::lround(grid.index(2, c[2])));
      if (a.wm[m] > 0.9f && a.nucleus[m] == kNoNucleus) break;
    }
    paint_shape(grid, true, c, 14.0, 1.2, a.mask, p.chi.data());
  }
  zero_outside(a.mask, p.chi.data());
  p.field.assign(p.chi.size(), 0.f);
  forward_field(p.chi.data(), Dims3{p.n, p.n, p.n}, p.voxel_mm, Vec3{0, 0, 1}, 0.0, p.n / 2,
                p.field.data());
  zero_outside(a.mask, p.field.data());
  p.mask = a.mask;
  p.labels = a.nucleus;
  // A haemorrhage over a nucleus would make its ROI mean meaningless.
  for (size_t m = 0; m < p.labels.size(); ++m)
    if (std::fabs(p.chi[m]) > 0.6f) p.labels[m] = kNoNucleus;
  return p;
}

}  // namespace dq
