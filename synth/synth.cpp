#include "synth/synth.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/error.h"
#include "core/nn/philox.h"
#include "synth/brain.h"

namespace dq {

namespace {

constexpr uint64_t kDrawsPerShape = 5;   // counters per shape in kSynthShapes
constexpr uint64_t kExtrasPerShape = 8;  // counters per shape in kSynthExtras (5 used)
constexpr double kPi = 3.14159265358979323846;

// Uniform integer in {lo, ..., hi}. philox_uniform has 24 bits, so the bias
// is below (hi - lo + 1) / 2^24, negligible for the counts and ranges here.
int64_t uniform_int(uint64_t key, uint64_t index, int64_t lo, int64_t hi) {
  const double u = philox_uniform(key, index);
  const int64_t v = lo + static_cast<int64_t>(std::floor(u * static_cast<double>(hi - lo + 1)));
  return std::min(v, hi);
}

double uniform_real(uint64_t key, uint64_t index, double lo, double hi) {
  return lo + (hi - lo) * static_cast<double>(philox_uniform(key, index));
}

// Bounding range of voxel indices along one axis that may lie within
// `half` voxels of `c`, clipped to [0, n). Widened by one voxel on each
// side of the exact interval so fp32 rounding in the membership test cannot
// be cut off; the test itself decides.
void axis_range(float c, double half, int64_t n, int64_t* lo, int64_t* hi) {
  *lo = std::max<int64_t>(0, static_cast<int64_t>(std::floor(c - half)) - 1);
  *hi = std::min<int64_t>(n - 1, static_cast<int64_t>(std::ceil(c + half)) + 1);
}

// The rule's offset in mm along one axis; two statements so that nothing
// can fuse them (or the following square) into a multiply-add.
inline float offset_mm(int64_t i, float c, float voxel) {
  const float d = static_cast<float>(i) - c;
  const float m = d * voxel;
  return m;
}

// The shape's chi: a lesion value with probability lesion_prob, otherwise
// drawn from chi_dist.
float draw_chi(const Recipe& r, uint64_t ks, uint64_t kx, uint64_t c0, uint64_t e0) {
  if (static_cast<double>(philox_uniform(kx, e0 + 3)) < r.lesion_prob)
    return static_cast<float>(uniform_real(kx, e0 + 4, r.lesion_chi_min, r.lesion_chi_max));
  if (r.chi_dist == "normal") {
    const double u1 = 1.0 - static_cast<double>(philox_uniform(ks, c0 + 4));  // (0, 1]
    const double u2 = static_cast<double>(philox_uniform(kx, e0 + 2));
    const double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
    return static_cast<float>(r.chi_mean + r.chi_std * z);
  }
  if (r.chi_dist == "discrete") {
    const int64_t m = static_cast<int64_t>(r.chi_values.size());
    return static_cast<float>(r.chi_values[static_cast<size_t>(uniform_int(ks, c0 + 4, 0, m - 1))]);
  }
  return static_cast<float>(uniform_real(ks, c0 + 4, r.chi_min, r.chi_max));
}

}  // namespace

uint64_t synth_volume_key(uint64_t seed, int64_t volume) {
  return key_for(key_for(seed, kSynthPurpose), static_cast<uint64_t>(volume));
}

std::array<float, 3> raster_voxel_mm(const Recipe& r) {
  return {static_cast<float>(r.voxel_mm[0]), static_cast<float>(r.voxel_mm[1]),
          static_cast<float>(r.voxel_mm[2])};
}

bool shape_contains(const SynthShape& s, const std::array<float, 3>& voxel, int64_t i, int64_t j,
                    int64_t k) {
  const float dx = offset_mm(i, s.centre[0], voxel[0]);
  const float dy = offset_mm(j, s.centre[1], voxel[1]);
  const float dz = offset_mm(k, s.centre[2], voxel[2]);
  if (s.kind != ShapeKind::sphere)
    return std::fabs(dx) <= s.size[0] * 0.5f && std::fabs(dy) <= s.size[1] * 0.5f &&
           std::fabs(dz) <= s.size[2] * 0.5f;
  const float half = s.size[0] * 0.5f;
  const float r2 = half * half;
  const float xx = dx * dx;
  const float yy = dy * dy;
  const float zz = dz * dz;
  const float xy = xx + yy;
  const float d2 = xy + zz;
  return d2 <= r2;
}

std::vector<SynthShape> draw_shapes(const Recipe& r, uint64_t seed, int64_t volume) {
  r.validate();
  const uint64_t vkey = synth_volume_key(seed, volume);

  const uint64_t kc = key_for(vkey, kSynthCounts);
  const int64_t n_cubes = uniform_int(kc, 0, r.cubes_min, r.cubes_max);
  const int64_t n_spheres = uniform_int(kc, 1, r.spheres_min, r.spheres_max);
  // Counter 2 is only drawn from when boxes are enabled, so that it costs
  // the paper recipe nothing; its value would be 0 anyway.
  const int64_t n_boxes = r.rects_max > 0 ? uniform_int(kc, 2, r.rects_min, r.rects_max) : 0;
  const int64_t total = n_cubes + n_spheres + n_boxes;

  std::vector<ShapeKind> kinds(static_cast<size_t>(total), ShapeKind::sphere);
  std::fill(kinds.begin(), kinds.begin() + n_cubes, ShapeKind::cube);
  std::fill(kinds.end() - n_boxes, kinds.end(), ShapeKind::box);
  // Fisher-Yates from the back: draw t picks the kind that goes to position
  // total - 1 - t, giving every ordering of the multiset equal probability.
  const uint64_t ko = key_for(vkey, kSynthOrder);
  for (int64_t pos = total - 1, t = 0; pos > 0; --pos, ++t)
    std::swap(kinds[static_cast<size_t>(pos)],
              kinds[static_cast<size_t>(uniform_int(ko, static_cast<uint64_t>(t), 0, pos))]);

  const uint64_t ks = key_for(vkey, kSynthShapes);
  const uint64_t kx = key_for(vkey, kSynthExtras);
  const double n = static_cast<double>(r.volume_size);
  const double ref_mm = r.size_reference_mm();
  std::vector<SynthShape> shapes(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) {
    SynthShape& s = shapes[static_cast<size_t>(i)];
    const uint64_t c0 = static_cast<uint64_t>(i) * kDrawsPerShape;
    const uint64_t e0 = static_cast<uint64_t>(i) * kExtrasPerShape;
    s.kind = kinds[static_cast<size_t>(i)];
    // Uniform over the volume's extent [-0.5, n - 0.5]: voxel centres are at
    // integers (the top end is reachable only through fp32 rounding).
    for (int a = 0; a < 3; ++a)
      s.centre[a] =
          static_cast<float>(uniform_real(ks, c0 + static_cast<uint64_t>(a), -0.5, n - 0.5));
    const float side =
        static_cast<float>(ref_mm * uniform_real(ks, c0 + 3, r.size_min, r.size_max));
    s.size[0] = s.size[1] = s.size[2] = side;
    if (s.kind == ShapeKind::box) {
      s.size[1] = static_cast<float>(ref_mm * uniform_real(kx, e0, r.size_min, r.size_max));
      s.size[2] = static_cast<float>(ref_mm * uniform_real(kx, e0 + 1, r.size_min, r.size_max));
    }
    s.chi = draw_chi(r, ks, kx, c0, e0);
  }
  return shapes;
}

Vec3 volume_b0(const Recipe& r, uint64_t seed, int64_t volume) {
  const Vec3& b = r.b0_dir;
  if (r.b0_cone_deg == 0) return b;
  // Uniform on the cap: cos(theta) uniform in [cos(alpha), 1], phi uniform.
  const uint64_t kb = key_for(synth_volume_key(seed, volume), kSynthB0);
  const double cos_a = std::cos(r.b0_cone_deg * kPi / 180.0);
  const double ct = 1.0 - static_cast<double>(philox_uniform(kb, 0)) * (1.0 - cos_a);
  const double st = std::sqrt(std::max(0.0, 1.0 - ct * ct));
  const double phi = 2.0 * kPi * static_cast<double>(philox_uniform(kb, 1));
  // An orthonormal basis (e1, e2, b): e1 from the axis least aligned with b.
  const int least = std::fabs(b[0]) <= std::fabs(b[1])
                        ? (std::fabs(b[0]) <= std::fabs(b[2]) ? 0 : 2)
                        : (std::fabs(b[1]) <= std::fabs(b[2]) ? 1 : 2);
  Vec3 a{0, 0, 0};
  a[static_cast<size_t>(least)] = 1.0;
  Vec3 e1{a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]};
  const double l1 = std::sqrt(e1[0] * e1[0] + e1[1] * e1[1] + e1[2] * e1[2]);
  for (double& x : e1) x /= l1;
  const Vec3 e2{b[1] * e1[2] - b[2] * e1[1], b[2] * e1[0] - b[0] * e1[2],
                b[0] * e1[1] - b[1] * e1[0]};
  Vec3 d;
  for (size_t i = 0; i < 3; ++i)
    d[i] = st * std::cos(phi) * e1[i] + st * std::sin(phi) * e2[i] + ct * b[i];
  const double l = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
  return {d[0] / l, d[1] / l, d[2] / l};
}

void rasterise(const Recipe& r, const std::vector<SynthShape>& shapes, float* chi) {
  const int64_t n = r.volume_size;
  const std::array<float, 3> vox = raster_voxel_mm(r);
  const bool add = r.additive;
  std::vector<uint8_t> in_x(static_cast<size_t>(n)), in_y(static_cast<size_t>(n)),
      in_z(static_cast<size_t>(n));
  for (const SynthShape& s : shapes) {
    int64_t lo[3], hi[3];
    for (int a = 0; a < 3; ++a)
      axis_range(s.centre[a], 0.5 * static_cast<double>(s.size[a]) / vox[a], n, &lo[a], &hi[a]);
    if (lo[0] > hi[0] || lo[1] > hi[1] || lo[2] > hi[2]) continue;  // entirely outside

    if (s.kind != ShapeKind::sphere) {
      // Cubes and boxes are separable: test each axis once, then fill the
      // product. Same comparisons as shape_contains, so the two agree.
      const float hx = s.size[0] * 0.5f, hy = s.size[1] * 0.5f, hz = s.size[2] * 0.5f;
      for (int64_t i = lo[0]; i <= hi[0]; ++i)
        in_x[i] = std::fabs(offset_mm(i, s.centre[0], vox[0])) <= hx;
      for (int64_t j = lo[1]; j <= hi[1]; ++j)
        in_y[j] = std::fabs(offset_mm(j, s.centre[1], vox[1])) <= hy;
      for (int64_t k = lo[2]; k <= hi[2]; ++k)
        in_z[k] = std::fabs(offset_mm(k, s.centre[2], vox[2])) <= hz;
      for (int64_t k = lo[2]; k <= hi[2]; ++k) {
        if (!in_z[k]) continue;
        for (int64_t j = lo[1]; j <= hi[1]; ++j) {
          if (!in_y[j]) continue;
          float* row = chi + (k * n + j) * n;
          for (int64_t i = lo[0]; i <= hi[0]; ++i)
            if (in_x[i]) row[i] = add ? row[i] + s.chi : s.chi;
        }
      }
    } else {
      for (int64_t k = lo[2]; k <= hi[2]; ++k)
        for (int64_t j = lo[1]; j <= hi[1]; ++j) {
          float* row = chi + (k * n + j) * n;
          for (int64_t i = lo[0]; i <= hi[0]; ++i)
            if (shape_contains(s, vox, i, j, k)) row[i] = add ? row[i] + s.chi : s.chi;
        }
    }
  }
}

double synth_gauss(uint64_t key, uint64_t index) {
  const double u1 = 1.0 - static_cast<double>(philox_uniform(key, 2 * index));  // (0, 1]
  const double u2 = static_cast<double>(philox_uniform(key, 2 * index + 1));
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * kPi * u2);
}

double volume_noise_std(const Recipe& r, uint64_t seed, int64_t volume) {
  if (!(r.noise_std_max > r.noise_std)) return r.noise_std;
  const uint64_t kl = key_for(synth_volume_key(seed, volume), kSynthNoiseLevel);
  return r.noise_std + (r.noise_std_max - r.noise_std) * static_cast<double>(philox_uniform(kl, 0));
}

void add_field_noise(const Recipe& r, uint64_t seed, int64_t volume, float* field) {
  const double sd = volume_noise_std(r, seed, volume);
  if (sd == 0) return;
  const uint64_t kn = key_for(synth_volume_key(seed, volume), kSynthNoise);
  const int64_t m = r.volume_size * r.volume_size * r.volume_size;
  for (int64_t i = 0; i < m; ++i)
    field[i] += static_cast<float>(sd * synth_gauss(kn, static_cast<uint64_t>(i)));
}

SynthRegion draw_region(const Recipe& r, uint64_t seed, int64_t volume) {
  SynthRegion g;
  if (r.region_prob == 0) return g;
  const uint64_t kg = key_for(synth_volume_key(seed, volume), kSynthRegion);
  if (static_cast<double>(philox_uniform(kg, 0)) >= r.region_prob) return g;
  g.active = true;
  const double n = static_cast<double>(r.volume_size);
  for (int a = 0; a < 3; ++a) {
    const auto ua = static_cast<uint64_t>(a);
    g.centre[a] = static_cast<float>((n - 1) / 2 + uniform_real(kg, 1 + ua, -0.1, 0.1) * n);
    g.inv_axis[a] = static_cast<float>(
        1.0 / (n * uniform_real(kg, 4 + ua, r.region_size_min, r.region_size_max)));
  }
  return g;
}

bool region_contains(const SynthRegion& g, int64_t i, int64_t j, int64_t k) {
  if (!g.active) return true;
  // offset_mm's two fp32 steps, scaled by 1 / semi-axis instead of the voxel size.
  const float ux = offset_mm(i, g.centre[0], g.inv_axis[0]);
  const float uy = offset_mm(j, g.centre[1], g.inv_axis[1]);
  const float uz = offset_mm(k, g.centre[2], g.inv_axis[2]);
  const float xx = ux * ux;
  const float yy = uy * uy;
  const float zz = uz * uz;
  const float xy = xx + yy;
  const float d2 = xy + zz;
  return d2 <= 1.0f;
}

void apply_region(const SynthRegion& g, int64_t n, float* v) {
  if (!g.active) return;
  for (int64_t k = 0; k < n; ++k)
    for (int64_t j = 0; j < n; ++j) {
      float* row = v + (k * n + j) * n;
      for (int64_t i = 0; i < n; ++i)
        if (!region_contains(g, i, j, k)) row[i] = 0.0f;
    }
}

SynthVolume generate_volume(const Recipe& r, uint64_t seed, int64_t volume) {
  if (volume_is_brain(r, seed, volume)) return generate_brain_volume(r, seed, volume);
  SynthVolume v;
  v.n = r.volume_size;
  const Dims3 dims{v.n, v.n, v.n};
  v.chi.assign(static_cast<size_t>(dims.numel()), 0.0f);
  v.field.assign(static_cast<size_t>(dims.numel()), 0.0f);
  rasterise(r, draw_shapes(r, seed, volume), v.chi.data());
  const SynthRegion region = draw_region(r, seed, volume);
  apply_region(region, v.n, v.chi.data());
  v.b0 = volume_b0(r, seed, volume);
  forward_field(v.chi.data(), dims, r.voxel_mm, v.b0, r.dipole_k0, r.pad, v.field.data());
  add_field_noise(r, seed, volume, v.field.data());
  apply_region(region, v.n, v.field.data());
  return v;
}

std::array<int64_t, 3> draw_patch_corner(const Recipe& r, uint64_t seed, int64_t volume, int p) {
  const uint64_t kp = key_for(synth_volume_key(seed, volume), kSynthCorners);
  const int64_t top = r.volume_size - r.patch_size;
  const uint64_t c0 = 3 * static_cast<uint64_t>(p);
  return {uniform_int(kp, c0, 0, top), uniform_int(kp, c0 + 1, 0, top),
          uniform_int(kp, c0 + 2, 0, top)};
}

void copy_patch(const float* volume, int64_t n, const std::array<int64_t, 3>& c, int64_t P,
                float* out) {
  const size_t row = sizeof(float) * static_cast<size_t>(P);
  for (int64_t k = 0; k < P; ++k)
    for (int64_t j = 0; j < P; ++j)
      std::memcpy(out + (k * P + j) * P, volume + ((c[0] + k) * n + (c[1] + j)) * n + c[2], row);
}

void cut_patches(const Recipe& r, const SynthVolume& v, uint64_t seed, int64_t volume, int count,
                 float* field_out, float* chi_out) {
  const int64_t n = v.n, P = r.patch_size;
  DQ_CHECK(n == r.volume_size && P > 0 && P <= n, "volume of side ", n, " cannot give ", P,
           "^3 patches for this recipe");
  for (int p = 0; p < count; ++p) {
    const std::array<int64_t, 3> c = draw_patch_corner(r, seed, volume, p);
    const int64_t base = static_cast<int64_t>(p) * P * P * P;
    copy_patch(v.field.data(), n, c, P, field_out + base);
    copy_patch(v.chi.data(), n, c, P, chi_out + base);
  }
}

PatchSet empty_patch_set(const Recipe& r, int64_t first_volume, int64_t n_volumes) {
  r.validate();
  if (first_volume < 0 || n_volumes < 0)
    fail("generate_patches: volume range [", first_volume, ", +", n_volumes, ") is invalid");
  const int64_t P = r.patch_size;
  const Shape shape{n_volumes * r.patches_per_volume, P, P, P, 1};
  return PatchSet{Tensor::zeros(shape), Tensor::zeros(shape)};
}

PatchSet generate_patches(const Recipe& r, uint64_t seed, int64_t first_volume, int64_t n_volumes) {
  PatchSet out = empty_patch_set(r, first_volume, n_volumes);
  const int64_t P = r.patch_size;
  const int64_t stride = r.patches_per_volume * P * P * P;  // floats per volume's patches
  for (int64_t v = 0; v < n_volumes; ++v) {
    const SynthVolume vol = generate_volume(r, seed, first_volume + v);
    cut_patches(r, vol, seed, first_volume + v, r.patches_per_volume, out.field.f32() + v * stride,
                out.chi.f32() + v * stride);
  }
  return out;
}

}  // namespace dq
