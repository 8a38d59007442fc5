// The head phantom (see core/phantom.h). Geometry is in mm on a 160 mm field
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
#include "core/phantom.h"

#include <cmath>

#include "core/error.h"

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

}  // namespace

Phantom make_head_phantom(int64_t n) {
  if (n < 16) fail("phantom size ", n, " is too small (need at least 16 voxels per side)");
  Phantom p;
  p.dims = {n, n, n};
  const double vox = 160.0 / static_cast<double>(n);
  p.voxel_mm = {vox, vox, vox};
  const size_t total = static_cast<size_t>(p.dims.numel());
  p.chi.assign(total, 0.0f);
  p.mask.assign(total, 0);
  const double c = 0.5 * static_cast<double>(n - 1);
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < n; ++j)
      for (int64_t i = 0; i < n; ++i) {
        const double x = (static_cast<double>(i) - c) * vox, y = (static_cast<double>(j) - c) * vox,
                     z = (static_cast<double>(k) - c) * vox;
        if (!inside(kBrain, x, y, z)) continue;
        const size_t idx = static_cast<size_t>((k * n + j) * n + i);
        p.mask[idx] = 1;
        float chi = kBrain.chi;
        for (const Ellipsoid& e : kStructures)
          if (inside(e, x, y, z)) chi = e.chi;
        p.chi[idx] = chi;
      }
  p.field.resize(total);
  forward_field(p.chi.data(), p.dims, p.voxel_mm, {0.0, 0.0, 1.0}, 0.0, n / 2, p.field.data());
  return p;
}

}  // namespace dq
