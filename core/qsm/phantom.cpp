// The head phantom (see core/qsm/phantom.h). Geometry is in mm on a 160 mm field
// of view centred on the origin, x left-right, y posterior-anterior, z
// inferior-superior; later ellipsoids overwrite earlier ones.
//
// chi values (ppm, relative to CSF), from in-vivo QSM at 3 T and 7 T:
//   grey matter (cortex)    +0.02   Deistung et al., NeuroImage 65:299 (2013); Wharton & Bowtell,
//   NeuroImage 53:515 (2010) white matter            -0.03   Deistung 2013; Li et al., NeuroImage
//   55:1645 (2011) CSF (ventricles)         0      the usual reference caudate nucleus +0.06
//   Deistung 2013; Langkammer et al., NeuroImage 62:1593 (2012) putamen                 +0.05
//   Deistung 2013; Langkammer 2012 globus pallidus         +0.17   Deistung 2013 (0.15-0.19 across
//   studies) thalamus                +0.01   Deistung 2013 substantia nigra        +0.14   Deistung
//   2013; Lim et al., NeuroImage 82:449 (2013) red nucleus             +0.10   Deistung 2013; Lim
//   2013 veins (deoxygenated)    +0.35   Haacke et al., MRI 23:1 (2005): 0.3-0.4 at Y ~ 0.6-0.7
#include "core/qsm/phantom.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/nn/philox.h"

namespace dq {

namespace {

struct Ellipsoid {
  double cx, cy, cz;  // centre, mm
  double ax, ay, az;  // semi-axes, mm
  float chi;          // ppm
};

// Paint order: outer to inner, veins last. Paired structures are mirrored in x.
const Ellipsoid kBrain{0, 0, 0, 66, 82, 60, 0.02f};  // cortex/grey matter shell
const Ellipsoid kStructures[] = {
    {0, 0, 4, 56, 70, 48, -0.03f},  // white matter
    {-12, 6, 12, 6, 24, 9, 0.0f},   // lateral ventricles (CSF)
    {12, 6, 12, 6, 24, 9, 0.0f},
    {-14, 20, 10, 5, 9, 8, 0.06f},  // caudate heads
    {14, 20, 10, 5, 9, 8, 0.06f},
    {-26, 2, 0, 5, 13, 9, 0.05f},  // putamen
    {26, 2, 0, 5, 13, 9, 0.05f},
    {-19, 0, -1, 3.5, 8, 6, 0.17f},  // globus pallidus
    {19, 0, -1, 3.5, 8, 6, 0.17f},
    {-9, -12, 5, 7, 11, 7, 0.01f},  // thalamus
    {9, -12, 5, 7, 11, 7, 0.01f},
    {-10, -12, -16, 3, 6, 2.5, 0.14f},  // substantia nigra
    {10, -12, -16, 3, 6, 2.5, 0.14f},
    {-5, -10, -11, 3, 3, 3, 0.10f},  // red nuclei
    {5, -10, -11, 3, 3, 3, 0.10f},
    {0, -8, 52, 2.5, 62, 2.5, 0.35f},  // superior sagittal sinus (under the vertex)
    {0, -6, 18, 1.5, 22, 1.5, 0.35f},  // internal cerebral veins
    {0, -50, 20, 2, 2, 22, 0.35f},     // straight sinus, along B0
};

bool inside(const Ellipsoid& e, double x, double y, double z) {
  const double u = (x - e.cx) / e.ax, v = (y - e.cy) / e.ay, w = (z - e.cz) / e.az;
  return u * u + v * v + w * w <= 1.0;
}

// The phantom's cubic grid: voxel index <-> mm from the centre of the field of view.
struct Axis {
  double centre;  // (n - 1) / 2, in voxels
  double vox;     // mm per voxel
  double mm(int64_t i) const { return (static_cast<double>(i) - centre) * vox; }
  double index(double mm) const { return mm / vox + centre; }
};

// Uniform draws of the detail, in order, under one key.
struct Draws {
  uint64_t key;
  uint64_t next = 0;
  double operator()(double lo, double hi) { return lo + (hi - lo) * philox_uniform(key, next++); }
  // A direction uniform on the unit sphere (x, y, z): two draws.
  Vec3 direction() {
    const double cz = (*this)(-1.0, 1.0), phi = (*this)(0.0, 2.0 * M_PI);
    const double sz = std::sqrt(1.0 - cz * cz);
    return {sz * std::cos(phi), sz * std::sin(phi), cz};
  }
};

// A smooth random field of about unit variance: a sum of plane waves with
// random directions, wavelengths in [lambda_lo, lambda_hi] mm and phases.
class WaveField {
 public:
  WaveField(Draws& draw, double lambda_lo, double lambda_hi) {
    for (Wave& w : waves_) {
      const Vec3 dir = draw.direction();
      const double k = 2.0 * M_PI / draw(lambda_lo, lambda_hi);
      w = {k * dir[0], k * dir[1], k * dir[2], draw(0.0, 2.0 * M_PI)};
    }
  }
  double operator()(double x, double y, double z) const {
    double s = 0.0;
    for (const Wave& w : waves_) s += std::cos(w.kx * x + w.ky * y + w.kz * z + w.phase);
    return s * std::sqrt(2.0 / kWaves);
  }

 private:
  static constexpr int kWaves = 16;
  struct Wave {
    double kx, ky, kz, phase;
  };
  Wave waves_[kWaves];
};

// The detail (make_head_phantom with a seed): what an in-vivo brain has and
// the ellipsoids lack, at the scales of a few voxels.
//   folds    the white-matter surface moves in and out by a smooth random
//            field (sd 8 % of its semi-axes, wavelengths 16-32 mm): gyri
//   sulci    CSF sheets about 2 mm thick through the cortex (the zero set of
//            another random field)
//   texture  +-0.01 ppm (sd) smooth variation inside grey and white matter
//            (wavelengths 6-16 mm), e.g. myelin and iron content
//   veins    kVeins straight vessels anywhere in the brain, random direction,
//            10-50 mm long, 0.5-1.25 mm radius, chi 0.25-0.45 ppm (Haacke 2005)
constexpr int kVeins = 80;
constexpr float kCsf = 0.0f, kWhite = -0.03f;

struct Vessel {
  double x0, y0, z0, dx, dy, dz, length, radius;
  float chi;
};

void add_detail(uint64_t seed, const Axis& axis, Phantom& p) {
  Draws draw{key_for(seed, 0x44455441494Cull)};  // "DETAIL"
  const WaveField folds(draw, 16.0, 32.0), sulci(draw, 16.0, 32.0), texture(draw, 6.0, 16.0);
  const Ellipsoid& wm = kStructures[0];
  const int64_t n = p.dims.nx;
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < n; ++i) {
        const size_t idx = static_cast<size_t>((k * n + j) * n + i);
        if (!p.mask[idx]) continue;
        const double x = axis.mm(i), y = axis.mm(j), z = axis.mm(k);
        float& chi = p.chi[idx];
        const bool deep = chi != kBrain.chi && chi != kWhite;  // nuclei, ventricles, veins
        if (!deep) {
          const double u = (x - wm.cx) / wm.ax, v = (y - wm.cy) / wm.ay, w = (z - wm.cz) / wm.az;
          const double r = 1.0 + 0.08 * folds(x, y, z);
          chi = u * u + v * v + w * w <= r * r ? kWhite : kBrain.chi;
          if (chi == kBrain.chi && std::fabs(sulci(x, y, z)) < 0.2) {
            chi = kCsf;
            continue;
          }
        }
        if (chi == kBrain.chi || chi == kWhite) chi += static_cast<float>(0.01 * texture(x, y, z));
      }
  for (int v = 0; v < kVeins; ++v) {
    Vessel s{};
    do {  // a start point inside the brain
      s.x0 = draw(-kBrain.ax, kBrain.ax);
      s.y0 = draw(-kBrain.ay, kBrain.ay);
      s.z0 = draw(-kBrain.az, kBrain.az);
    } while (!inside(kBrain, s.x0, s.y0, s.z0));
    const Vec3 dir = draw.direction();
    s.dx = dir[0];
    s.dy = dir[1];
    s.dz = dir[2];
    s.length = draw(10.0, 50.0);
    s.radius = draw(0.5, 1.25);
    s.chi = static_cast<float>(draw(0.25, 0.45));
    // Visit the segment's bounding box only.
    int64_t lo[3], hi[3];
    const double a[3] = {s.x0, s.y0, s.z0}, d[3] = {s.dx, s.dy, s.dz};
    for (int ax = 0; ax < 3; ++ax) {
      const double e0 = std::min(a[ax], a[ax] + s.length * d[ax]) - s.radius;
      const double e1 = std::max(a[ax], a[ax] + s.length * d[ax]) + s.radius;
      lo[ax] = std::max<int64_t>(0, static_cast<int64_t>(std::floor(axis.index(e0))));
      hi[ax] = std::min<int64_t>(n - 1, static_cast<int64_t>(std::ceil(axis.index(e1))));
    }
    for (int64_t k = lo[2]; k <= hi[2]; ++k)
      for (int64_t j = lo[1]; j <= hi[1]; ++j)
        for (int64_t i = lo[0]; i <= hi[0]; ++i) {
          const size_t idx = static_cast<size_t>((k * n + j) * n + i);
          if (!p.mask[idx]) continue;
          const double rx = axis.mm(i) - s.x0, ry = axis.mm(j) - s.y0, rz = axis.mm(k) - s.z0;
          const double t = std::clamp(rx * s.dx + ry * s.dy + rz * s.dz, 0.0, s.length);
          const double ex = rx - t * s.dx, ey = ry - t * s.dy, ez = rz - t * s.dz;
          if (ex * ex + ey * ey + ez * ez <= s.radius * s.radius) p.chi[idx] = s.chi;
        }
  }
}

}  // namespace

Phantom make_head_phantom(int64_t n, uint64_t detail_seed) {
  if (n < 16) fail("phantom size ", n, " is too small (need at least 16 voxels per side)");
  Phantom p;
  p.dims = {n, n, n};
  const double vox = 160.0 / static_cast<double>(n);
  p.voxel_mm = {vox, vox, vox};
  const size_t total = static_cast<size_t>(p.dims.numel());
  p.chi.assign(total, 0.0f);
  p.mask.assign(total, 0);
  const Axis axis{0.5 * static_cast<double>(n - 1), vox};
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < n; ++i) {
        const double x = axis.mm(i), y = axis.mm(j), z = axis.mm(k);
        if (!inside(kBrain, x, y, z)) continue;
        const size_t idx = static_cast<size_t>((k * n + j) * n + i);
        p.mask[idx] = 1;
        float chi = kBrain.chi;
        for (const Ellipsoid& e : kStructures)
          if (inside(e, x, y, z)) chi = e.chi;
        p.chi[idx] = chi;
      }
  if (detail_seed != 0) add_detail(detail_seed, axis, p);
  p.field.resize(total);
  forward_field(p.chi.data(), p.dims, p.voxel_mm, {0.0, 0.0, 1.0}, 0.0, n / 2, p.field.data());
  return p;
}

}  // namespace dq
