#include "synth/synth.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/dipole.h"
#include "core/error.h"
#include "core/philox.h"

namespace dq {

namespace {

enum Stream : uint64_t { kCounts = 0, kOrder = 1, kShapes = 2, kCorners = 3 };
constexpr uint64_t kDrawsPerShape = 5;

uint64_t volume_key(uint64_t seed, int64_t volume) {
  return key_for(key_for(seed, kSynthPurpose), static_cast<uint64_t>(volume));
}

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
// `half` of `c`, clipped to [0, n). Widened by one voxel on each side of the
// exact interval so fp32 rounding in the membership test cannot be cut off;
// the test itself decides.
void axis_range(float c, float half, int64_t n, int64_t* lo, int64_t* hi) {
  *lo = std::max<int64_t>(0, static_cast<int64_t>(std::floor(c - half)) - 1);
  *hi = std::min<int64_t>(n - 1, static_cast<int64_t>(std::ceil(c + half)) + 1);
}

}  // namespace

bool shape_contains(const SynthShape& s, int64_t i, int64_t j, int64_t k) {
  const float half = s.size * 0.5f;
  const float dx = static_cast<float>(i) - s.centre[0];
  const float dy = static_cast<float>(j) - s.centre[1];
  const float dz = static_cast<float>(k) - s.centre[2];
  if (s.kind == ShapeKind::cube)
    return std::fabs(dx) <= half && std::fabs(dy) <= half && std::fabs(dz) <= half;
  const float d2 = dx * dx + dy * dy + dz * dz;
  return d2 <= half * half;
}

std::vector<SynthShape> draw_shapes(const Recipe& r, uint64_t seed, int64_t volume) {
  r.validate();
  const uint64_t vkey = volume_key(seed, volume);

  const uint64_t kc = key_for(vkey, kCounts);
  const int64_t n_cubes = uniform_int(kc, 0, r.cubes_min, r.cubes_max);
  const int64_t n_spheres = uniform_int(kc, 1, r.spheres_min, r.spheres_max);
  const int64_t total = n_cubes + n_spheres;

  std::vector<ShapeKind> kinds(static_cast<size_t>(total), ShapeKind::sphere);
  std::fill(kinds.begin(), kinds.begin() + n_cubes, ShapeKind::cube);
  // Fisher-Yates from the back: draw t picks the kind that goes to position
  // total - 1 - t, giving every ordering of the multiset equal probability.
  const uint64_t ko = key_for(vkey, kOrder);
  for (int64_t pos = total - 1, t = 0; pos > 0; --pos, ++t)
    std::swap(kinds[static_cast<size_t>(pos)],
              kinds[static_cast<size_t>(uniform_int(ko, static_cast<uint64_t>(t), 0, pos))]);

  const uint64_t ks = key_for(vkey, kShapes);
  const double n = static_cast<double>(r.volume_size);
  std::vector<SynthShape> shapes(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) {
    SynthShape& s = shapes[static_cast<size_t>(i)];
    const uint64_t c0 = static_cast<uint64_t>(i) * kDrawsPerShape;
    s.kind = kinds[static_cast<size_t>(i)];
    // Uniform over the volume's extent [-0.5, n - 0.5]: voxel centres are at
    // integers (the top end is reachable only through fp32 rounding).
    for (int a = 0; a < 3; ++a)
      s.centre[a] =
          static_cast<float>(uniform_real(ks, c0 + static_cast<uint64_t>(a), -0.5, n - 0.5));
    s.size = static_cast<float>(n * uniform_real(ks, c0 + 3, r.size_min, r.size_max));
    s.chi = static_cast<float>(uniform_real(ks, c0 + 4, r.chi_min, r.chi_max));
  }
  return shapes;
}

void rasterise(const Recipe& r, const std::vector<SynthShape>& shapes, float* chi) {
  const int64_t n = r.volume_size;
  std::vector<uint8_t> in_x(static_cast<size_t>(n)), in_y(static_cast<size_t>(n)),
      in_z(static_cast<size_t>(n));
  for (const SynthShape& s : shapes) {
    const float half = s.size * 0.5f;
    int64_t lo[3], hi[3];
    for (int a = 0; a < 3; ++a) axis_range(s.centre[a], half, n, &lo[a], &hi[a]);
    if (lo[0] > hi[0] || lo[1] > hi[1] || lo[2] > hi[2]) continue;  // entirely outside

    if (s.kind == ShapeKind::cube) {
      // A cube is separable: test each axis once, then fill the product.
      // Same comparisons as shape_contains, so the two agree voxel for voxel.
      for (int64_t i = lo[0]; i <= hi[0]; ++i)
        in_x[i] = std::fabs(static_cast<float>(i) - s.centre[0]) <= half;
      for (int64_t j = lo[1]; j <= hi[1]; ++j)
        in_y[j] = std::fabs(static_cast<float>(j) - s.centre[1]) <= half;
      for (int64_t k = lo[2]; k <= hi[2]; ++k)
        in_z[k] = std::fabs(static_cast<float>(k) - s.centre[2]) <= half;
      for (int64_t k = lo[2]; k <= hi[2]; ++k) {
        if (!in_z[k]) continue;
        for (int64_t j = lo[1]; j <= hi[1]; ++j) {
          if (!in_y[j]) continue;
          float* row = chi + (k * n + j) * n;
          for (int64_t i = lo[0]; i <= hi[0]; ++i)
            if (in_x[i]) row[i] = s.chi;
        }
      }
    } else {
      for (int64_t k = lo[2]; k <= hi[2]; ++k)
        for (int64_t j = lo[1]; j <= hi[1]; ++j) {
          float* row = chi + (k * n + j) * n;
          for (int64_t i = lo[0]; i <= hi[0]; ++i)
            if (shape_contains(s, i, j, k)) row[i] = s.chi;
        }
    }
  }
}

SynthVolume generate_volume(const Recipe& r, uint64_t seed, int64_t volume) {
  SynthVolume v;
  v.n = r.volume_size;
  const Dims3 dims{v.n, v.n, v.n};
  v.chi.assign(static_cast<size_t>(dims.numel()), 0.0f);
  v.field.assign(static_cast<size_t>(dims.numel()), 0.0f);
  rasterise(r, draw_shapes(r, seed, volume), v.chi.data());
  forward_field(v.chi.data(), dims, r.voxel_mm, r.b0_dir, r.dipole_k0, r.pad, v.field.data());
  return v;
}

std::array<int64_t, 3> draw_patch_corner(const Recipe& r, uint64_t seed, int64_t volume, int p) {
  const uint64_t kp = key_for(volume_key(seed, volume), kCorners);
  const int64_t top = r.volume_size - r.patch_size;
  const uint64_t c0 = 3 * static_cast<uint64_t>(p);
  return {uniform_int(kp, c0, 0, top), uniform_int(kp, c0 + 1, 0, top),
          uniform_int(kp, c0 + 2, 0, top)};
}

void cut_patches(const Recipe& r, const SynthVolume& v, uint64_t seed, int64_t volume, int count,
                 float* field_out, float* chi_out) {
  const int64_t n = v.n, P = r.patch_size;
  DQ_CHECK(n == r.volume_size && P > 0 && P <= n, "volume of side ", n, " cannot give ", P,
           "^3 patches for this recipe");
  const size_t row = sizeof(float) * static_cast<size_t>(P);
  for (int p = 0; p < count; ++p) {
    const std::array<int64_t, 3> c = draw_patch_corner(r, seed, volume, p);
    const int64_t base = static_cast<int64_t>(p) * P * P * P;
    for (int64_t k = 0; k < P; ++k)
      for (int64_t j = 0; j < P; ++j) {
        const int64_t src = ((c[0] + k) * n + (c[1] + j)) * n + c[2];
        const int64_t dst = base + (k * P + j) * P;
        std::memcpy(field_out + dst, v.field.data() + src, row);
        std::memcpy(chi_out + dst, v.chi.data() + src, row);
      }
  }
}

PatchSet generate_patches(const Recipe& r, uint64_t seed, int64_t first_volume, int64_t n_volumes) {
  r.validate();
  if (first_volume < 0 || n_volumes < 0)
    fail("generate_patches: volume range [", first_volume, ", +", n_volumes, ") is invalid");
  const int64_t P = r.patch_size, per = r.patches_per_volume;
  const Shape shape{n_volumes * per, P, P, P, 1};
  PatchSet out{Tensor::zeros(shape), Tensor::zeros(shape)};
  const int64_t stride = per * P * P * P;  // floats per volume's patches
  for (int64_t v = 0; v < n_volumes; ++v) {
    const SynthVolume vol = generate_volume(r, seed, first_volume + v);
    cut_patches(r, vol, seed, first_volume + v, r.patches_per_volume, out.field.f32() + v * stride,
                out.chi.f32() + v * stride);
  }
  return out;
}

}  // namespace dq
