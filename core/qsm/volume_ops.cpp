// Volume geometry for inference (see core/qsm/volume_ops.h).
#include "core/qsm/volume_ops.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace dq {

namespace {

size_t at(const Dims3& d, int64_t z, int64_t y, int64_t x) {
  return static_cast<size_t>((z * d.ny + y) * d.nx + x);
}

// Copies the box [start, start + size) of `in` into `out` (size), zeros
// where the box leaves the volume.
void extract_box(const float* in, const Dims3& dims, const std::array<int64_t, 3>& start,
                 const Dims3& size, float* out) {
  for (int64_t z = 0; z < size.nz; ++z) {
    const int64_t sz = start[0] + z;
    for (int64_t y = 0; y < size.ny; ++y) {
      const int64_t sy = start[1] + y;
      float* row = out + at(size, z, y, 0);
      if (sz < 0 || sz >= dims.nz || sy < 0 || sy >= dims.ny) {
        std::fill(row, row + size.nx, 0.0f);
        continue;
      }
      for (int64_t x = 0; x < size.nx; ++x) {
        const int64_t sx = start[2] + x;
        row[x] = sx >= 0 && sx < dims.nx ? in[at(dims, sz, sy, sx)] : 0.0f;
      }
    }
  }
}

Vec3 mul(const Mat3& m, const Vec3& v) {
  return {m[0] * v[0] + m[1] * v[1] + m[2] * v[2], m[3] * v[0] + m[4] * v[1] + m[5] * v[2],
          m[6] * v[0] + m[7] * v[1] + m[8] * v[2]};
}

}  // namespace

// ------------------------------------------------------------- pad and crop

PadPlan pad_plan(const Dims3& in, int64_t multiple, int64_t margin) {
  DQ_CHECK(multiple >= 1 && margin >= 0, "bad pad_plan arguments");
  PadPlan p;
  p.in = in;
  p.out = {round_up(in.nz + 2 * margin, multiple), round_up(in.ny + 2 * margin, multiple),
           round_up(in.nx + 2 * margin, multiple)};
  p.off_z = (p.out.nz - in.nz) / 2;
  p.off_y = (p.out.ny - in.ny) / 2;
  p.off_x = (p.out.nx - in.nx) / 2;
  return p;
}

std::vector<float> pad_volume(const float* in, const PadPlan& p) {
  std::vector<float> out(static_cast<size_t>(p.out.numel()), 0.0f);
  for (int64_t z = 0; z < p.in.nz; ++z)
    for (int64_t y = 0; y < p.in.ny; ++y)
      std::copy_n(
          in + at(p.in, z, y, 0), p.in.nx,
          out.begin() + static_cast<std::ptrdiff_t>(at(p.out, z + p.off_z, y + p.off_y, p.off_x)));
  return out;
}

std::vector<float> crop_volume(const float* out, const PadPlan& p) {
  std::vector<float> in(static_cast<size_t>(p.in.numel()));
  for (int64_t z = 0; z < p.in.nz; ++z)
    for (int64_t y = 0; y < p.in.ny; ++y)
      std::copy_n(out + at(p.out, z + p.off_z, y + p.off_y, p.off_x), p.in.nx,
                  in.begin() + static_cast<std::ptrdiff_t>(at(p.in, z, y, 0)));
  return in;
}

// ------------------------------------------------------------------ tiling

std::vector<Tile> make_tiles(const Dims3& dims, int64_t tile, int64_t halo, int64_t multiple) {
  if (tile <= 0 || tile % multiple != 0)
    fail("tile side ", tile, " must be a positive multiple of ", multiple);
  if (halo < 0 || halo % multiple != 0)
    fail("halo ", halo, " must be a non-negative multiple of ", multiple);
  if (tile - 2 * halo < multiple)
    fail("tile side ", tile, " leaves no core with halo ", halo, " (need tile >= 2*halo + ",
         multiple, ")");
  const int64_t n[3] = {dims.nz, dims.ny, dims.nx};
  // Per axis: (start, size, core_start, core_end) of each tile.
  std::vector<std::array<int64_t, 4>> axes[3];
  for (int a = 0; a < 3; ++a) {
    if (n[a] <= tile) {
      axes[a].push_back({0, round_up(n[a], multiple), 0, n[a]});
      continue;
    }
    if (n[a] % multiple != 0)
      fail("tiling needs sides that are multiples of ", multiple, " (pad first), got ", n[a]);
    // Tiles stay inside the volume (clamped at both ends): a tile reaching
    // past the edge would feed ReLU(bias) activations where a whole-volume
    // pass has zero padding. The clamped start is still on the pooling grid
    // and still leaves `halo` voxels around the core except at the volume's
    // own edges, where the tile's edge is the volume's edge.
    const int64_t core = tile - 2 * halo;
    for (int64_t c = 0; c < n[a]; c += core) {
      const int64_t start = std::min(std::max<int64_t>(c - halo, 0), n[a] - tile);
      axes[a].push_back({start, tile, c, std::min(c + core, n[a])});
    }
  }
  std::vector<Tile> tiles;
  for (const auto& z : axes[0])
    for (const auto& y : axes[1])
      for (const auto& x : axes[2]) {
        Tile t;
        t.start = {z[0], y[0], x[0]};
        t.size = {z[1], y[1], x[1]};
        t.core_start = {z[2], y[2], x[2]};
        t.core_end = {z[3], y[3], x[3]};
        tiles.push_back(t);
      }
  return tiles;
}

void run_tiled(const float* in, const Dims3& dims, const std::vector<Tile>& tiles,
               const VolumeFn& net, float* out) {
  std::vector<float> tin, tout;
  for (const Tile& t : tiles) {
    const Dims3 td{t.size[0], t.size[1], t.size[2]};
    tin.resize(static_cast<size_t>(td.numel()));
    extract_box(in, dims, t.start, td, tin.data());
    tout.assign(tin.size(), 0.0f);
    net(td, tin, tout);
    DQ_CHECK(tout.size() == tin.size(), "tile network changed the tile size");
    for (int64_t z = t.core_start[0]; z < t.core_end[0]; ++z)
      for (int64_t y = t.core_start[1]; y < t.core_end[1]; ++y) {
        const int64_t x0 = t.core_start[2];
        const float* src = tout.data() + at(td, z - t.start[0], y - t.start[1], x0 - t.start[2]);
        std::copy(src, src + (t.core_end[2] - x0), out + at(dims, z, y, x0));
      }
  }
}

// ------------------------------------------------------------ resampling

Mat3 transpose(const Mat3& m) {
  return {m[0], m[3], m[6], m[1], m[4], m[7], m[2], m[5], m[8]};
}

double angle_to_z_deg(const Vec3& b) {
  const double n = std::sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2]);
  if (!(n > 0.0) || !std::isfinite(n)) fail("the B0 direction must be a finite, non-zero vector");
  const double c = std::min(1.0, std::fabs(b[2]) / n);
  return std::acos(c) * 180.0 / M_PI;
}

Mat3 rotation_to_z(const Vec3& b) {
  const double n = std::sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2]);
  if (!(n > 0.0) || !std::isfinite(n)) fail("the B0 direction must be a finite, non-zero vector");
  // b and -b give the same dipole kernel, so fold b into the upper half.
  const double s = b[2] < 0 ? -1.0 : 1.0;
  const Vec3 u{s * b[0] / n, s * b[1] / n, s * b[2] / n};
  // Rodrigues: rotate about a = u x z by the angle between u and z.
  const double ax = u[1], ay = -u[0];  // u x (0, 0, 1)
  const double sin_t = std::sqrt(ax * ax + ay * ay), cos_t = u[2];
  if (sin_t < 1e-12) return {1, 0, 0, 0, 1, 0, 0, 0, 1};
  const double kx = ax / sin_t, ky = ay / sin_t;  // unit axis, kz = 0
  const double v = 1.0 - cos_t;
  return {cos_t + kx * kx * v, kx * ky * v, ky * sin_t, kx * ky * v, cos_t + ky * ky * v,
          -kx * sin_t,         -ky * sin_t, kx * sin_t, cos_t};
}

std::vector<float> resample(const float* in, const Grid& ig, const Grid& og, const Mat3& R) {
  const Dims3& id = ig.dims;
  const Dims3& od = og.dims;
  std::vector<float> out(static_cast<size_t>(od.numel()), 0.0f);
  const double icx = 0.5 * static_cast<double>(id.nx - 1),
               icy = 0.5 * static_cast<double>(id.ny - 1),
               icz = 0.5 * static_cast<double>(id.nz - 1);
  const double ocx = 0.5 * static_cast<double>(od.nx - 1),
               ocy = 0.5 * static_cast<double>(od.ny - 1),
               ocz = 0.5 * static_cast<double>(od.nz - 1);
  for (int64_t k = 0; k < od.nz; ++k)
    for (int64_t j = 0; j < od.ny; ++j)
      for (int64_t i = 0; i < od.nx; ++i) {
        const Vec3 p{(static_cast<double>(i) - ocx) * og.voxel_mm[0],
                     (static_cast<double>(j) - ocy) * og.voxel_mm[1],
                     (static_cast<double>(k) - ocz) * og.voxel_mm[2]};
        const Vec3 q = mul(R, p);
        const double fx = q[0] / ig.voxel_mm[0] + icx, fy = q[1] / ig.voxel_mm[1] + icy,
                     fz = q[2] / ig.voxel_mm[2] + icz;
        // Within half a voxel of the edge counts as inside (clamped), so an
        // identity resample reproduces the input exactly at its borders.
        if (fx < -0.5 || fy < -0.5 || fz < -0.5 || fx > static_cast<double>(id.nx) - 0.5 ||
            fy > static_cast<double>(id.ny) - 0.5 || fz > static_cast<double>(id.nz) - 0.5)
          continue;
        const double cx = std::clamp(fx, 0.0, static_cast<double>(id.nx - 1));
        const double cy = std::clamp(fy, 0.0, static_cast<double>(id.ny - 1));
        const double cz = std::clamp(fz, 0.0, static_cast<double>(id.nz - 1));
        const int64_t x0 = std::min<int64_t>(static_cast<int64_t>(cx), id.nx - 1);
        const int64_t y0 = std::min<int64_t>(static_cast<int64_t>(cy), id.ny - 1);
        const int64_t z0 = std::min<int64_t>(static_cast<int64_t>(cz), id.nz - 1);
        const int64_t x1 = std::min(x0 + 1, id.nx - 1), y1 = std::min(y0 + 1, id.ny - 1),
                      z1 = std::min(z0 + 1, id.nz - 1);
        const double wx = cx - static_cast<double>(x0), wy = cy - static_cast<double>(y0),
                     wz = cz - static_cast<double>(z0);
        auto v = [&](int64_t z, int64_t y, int64_t x) {
          return static_cast<double>(in[at(id, z, y, x)]);
        };
        const double c00 = v(z0, y0, x0) * (1 - wx) + v(z0, y0, x1) * wx;
        const double c01 = v(z0, y1, x0) * (1 - wx) + v(z0, y1, x1) * wx;
        const double c10 = v(z1, y0, x0) * (1 - wx) + v(z1, y0, x1) * wx;
        const double c11 = v(z1, y1, x0) * (1 - wx) + v(z1, y1, x1) * wx;
        const double c0 = c00 * (1 - wy) + c01 * wy, c1 = c10 * (1 - wy) + c11 * wy;
        out[at(od, k, j, i)] = static_cast<float>(c0 * (1 - wz) + c1 * wz);
      }
  return out;
}

Grid rotated_bounding_grid(const Grid& in, const Mat3& R, double iso_mm) {
  if (!(iso_mm > 0.0)) fail("isotropic voxel size must be positive, got ", iso_mm);
  const double h[3] = {0.5 * static_cast<double>(in.dims.nx - 1) * in.voxel_mm[0],
                       0.5 * static_cast<double>(in.dims.ny - 1) * in.voxel_mm[1],
                       0.5 * static_cast<double>(in.dims.nz - 1) * in.voxel_mm[2]};
  // resample() reads in(R p); the points p that land on in's corners c are
  // p = R^T c, so the grid must span R^T of in's box.
  const Mat3 Rt = transpose(R);
  double ext[3] = {0, 0, 0};
  for (int sx = -1; sx <= 1; sx += 2)
    for (int sy = -1; sy <= 1; sy += 2)
      for (int sz = -1; sz <= 1; sz += 2) {
        const Vec3 p = mul(Rt, {sx * h[0], sy * h[1], sz * h[2]});
        for (int a = 0; a < 3; ++a) ext[a] = std::max(ext[a], std::fabs(p[static_cast<size_t>(a)]));
      }
  // 1e-9 absorbs rounding in R so an identity rotation keeps integer sides.
  auto side = [&](double e) {
    const double n = std::ceil(2.0 * e / iso_mm - 1e-9) + 1;
    // A voxel side of 1e-30 mm beside 1 mm ones asks for a grid no machine
    // holds (and overflows int64): refuse it in words, before allocating.
    if (!(n <= static_cast<double>(kMaxResampledSide)))
      fail("resampling to ", iso_mm, " mm isotropic voxels would need a side of ", n,
           " voxels (at most ", kMaxResampledSide, "); check the voxel sizes (", in.voxel_mm[0],
           " x ", in.voxel_mm[1], " x ", in.voxel_mm[2], " mm) or raise --max-anisotropy");
    return static_cast<int64_t>(n);
  };
  Grid g;
  g.dims = {side(ext[2]), side(ext[1]), side(ext[0])};
  g.voxel_mm = {iso_mm, iso_mm, iso_mm};
  return g;
}

// ------------------------------------------------------------ units, masks

FieldUnit field_unit_from_name(const std::string& name) {
  if (name == "ppm") return FieldUnit::ppm;
  if (name == "hz" || name == "Hz") return FieldUnit::hz;
  if (name == "rad") return FieldUnit::rad;
  fail("unknown field unit '", name, "' (expected ppm, hz or rad)");
}

double to_ppm_factor(FieldUnit unit, double b0_tesla, double te_s) {
  if (unit == FieldUnit::ppm) return 1.0;
  if (!(b0_tesla > 0.0) || !std::isfinite(b0_tesla))
    fail("--b0 (field strength in tesla) must be positive to convert from ",
         unit == FieldUnit::hz ? "Hz" : "radians");
  if (unit == FieldUnit::hz) return 1e6 / (kGammaBarHzPerT * b0_tesla);
  if (!(te_s > 0.0) || !std::isfinite(te_s))
    fail("--te (echo time in seconds) must be positive to convert from radians");
  return 1e6 / (2.0 * M_PI * te_s * kGammaBarHzPerT * b0_tesla);
}

void apply_mask(float* data, const uint8_t* mask, int64_t n) {
  for (int64_t i = 0; i < n; ++i)
    if (!mask[i]) data[i] = 0.0f;
}

int64_t count_non_finite(const float* v, size_t n, const uint8_t* mask) {
  int64_t bad = 0;
  for (size_t i = 0; i < n; ++i) bad += (!mask || mask[i]) && !std::isfinite(v[i]);
  return bad;
}

void require_finite_result(const std::vector<float>& v, const std::string& what) {
  const int64_t bad = count_non_finite(v.data(), v.size());
  if (bad > 0)
    fail("the computed ", what, " has ", bad,
         " NaN or infinite voxels (an overflow: check the "
         "parameters and the input's scale); nothing written");
}

MaskedField mask_field(std::vector<float>& field, std::vector<uint8_t>& mask,
                       const std::string& path) {
  DQ_CHECK(field.size() == mask.size(), "mask_field: the mask has another size");
  MaskedField r;
  int64_t n_inf = 0;
  for (size_t i = 0; i < field.size(); ++i) {
    float& v = field[i];
    if (std::isnan(v)) {
      ++r.nan;
      mask[i] = 0;
    } else if (std::isinf(v) && mask[i]) {
      ++n_inf;
    }
    if (!mask[i]) v = 0.0f;
    r.inside += mask[i] != 0;
  }
  if (n_inf > 0)
    fail(path, ": ", n_inf,
         " voxels inside the mask are infinite; fix the field map (or set them to NaN "
         "to treat them as outside the mask)");
  if (r.inside == 0) fail(path, ": no voxel is inside the mask (and finite)");
  return r;
}

double estimate_noise_std(const float* field, const uint8_t* mask, const Dims3& d) {
  const int64_t sx = 1, sy = d.nx, sz = d.nx * d.ny;
  const auto in = [&](int64_t i) { return !mask || mask[i] != 0; };
  std::vector<double> lap;
  for (int64_t k = 1; k + 1 < d.nz; ++k)
    for (int64_t j = 1; j + 1 < d.ny; ++j)
      for (int64_t i = 1; i + 1 < d.nx; ++i) {
        const int64_t c = (k * d.ny + j) * d.nx + i;
        if (!in(c) || !in(c - sx) || !in(c + sx) || !in(c - sy) || !in(c + sy) || !in(c - sz) ||
            !in(c + sz))
          continue;
        const double l =
            6.0 * field[c] - (static_cast<double>(field[c - sx]) + field[c + sx] + field[c - sy] +
                              field[c + sy] + field[c - sz] + field[c + sz]);
        lap.push_back(std::fabs(l));
      }
  if (lap.size() < 1000) return 0.0;
  auto mid = lap.begin() + static_cast<std::ptrdiff_t>(lap.size() / 2);
  std::nth_element(lap.begin(), mid, lap.end());
  return *mid / (0.6744897501960817 * std::sqrt(42.0));
}

}  // namespace dq
