// The two geometry types every room passes around: a grid's size in memory
// order and a physical vector. Volumes are (D, H, W) = (z, y, x) with x
// fastest (NIfTI's order, core/io/nifti_io.h); physical vectors (voxel size,
// B0 direction) are (x, y, z).
#pragma once
#include <array>
#include <cstddef>
#include <cstdint>

namespace dq {

using Vec3 = std::array<double, 3>;  // (x, y, z)

// A grid in memory order: nz slowest, nx fastest.
struct Dims3 {
  int64_t nz = 0, ny = 0, nx = 0;

  int64_t numel() const { return nz * ny * nx; }
  // Complex entries of the R2C half spectrum, (nz, ny, nx/2 + 1).
  int64_t half_numel() const { return nz * ny * (nx / 2 + 1); }
  Dims3 padded(int64_t pad) const { return {nz + 2 * pad, ny + 2 * pad, nx + 2 * pad}; }
  bool operator==(const Dims3& o) const { return nz == o.nz && ny == o.ny && nx == o.nx; }
};

// The product of sizes read from a file (a header's dims, a dataset's
// shape), or -1 when a size is negative or the product would pass `limit`:
// checked at every factor, so it never overflows int64 however the sizes
// were forged. Callers pass the most the file could hold as `limit`.
inline int64_t bounded_product(const int64_t* sizes, size_t n, int64_t limit) {
  int64_t p = 1;
  for (size_t i = 0; i < n; ++i)
    if (sizes[i] < 0 || __builtin_mul_overflow(p, sizes[i], &p) || p > limit) return -1;
  return p;
}

// n rounded up to a multiple of m (n >= 0, m > 0): a side padded to the
// network's side multiple.
inline int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

}  // namespace dq
