// rasterise_gpu: every shape of a volume in one kernel, following the rule
// at shape_contains (synth/synth.h) bit for bit. Each comparison's operands
// are computed with explicitly rounded fp32 intrinsics (__fsub_rn,
// __fmul_rn, __fadd_rn), which nvcc never contracts into an FMA; the host
// side computes the same operations one per statement.
#include <cstring>

#include "cuda/check.h"
#include "cuda/launch.h"
#include "synth/synth_gpu.h"

namespace dq {

namespace {

// A shape as the kernel reads it: half extents and the sphere's squared
// radius precomputed on the host with the rule's own fp32 operations
// (size * 0.5f, half * half), so they are the very values the CPU compares.
struct GpuShape {
  float centre[3];
  float half[3];  // mm
  float r2;       // sphere: half[0] * half[0], mm^2
  float chi;      // ppm
  int sphere;     // 1 for a sphere, 0 for a cube or box
  int pad_;       // keeps the struct at 40 bytes, a multiple of 8
};

constexpr int kShapesPerTile = 256;  // shapes staged in shared memory at a time

__global__ void rasterise_k(const GpuShape* shapes, int count, int64_t n, float vx, float vy,
                            float vz, int additive, float* chi) {
  __shared__ GpuShape tile[kShapesPerTile];
  const int64_t total = n * n * n;
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const bool active = idx < total;
  const int64_t i = active ? idx % n : 0, j = active ? idx / n % n : 0,
                k = active ? idx / (n * n) : 0;
  const float fi = static_cast<float>(i), fj = static_cast<float>(j), fk = static_cast<float>(k);
  float value = active ? chi[idx] : 0.0f;
  for (int base = 0; base < count; base += kShapesPerTile) {
    const int m = min(kShapesPerTile, count - base);
    __syncthreads();
    for (int t = threadIdx.x; t < m; t += blockDim.x) tile[t] = shapes[base + t];
    __syncthreads();
    if (!active) continue;
    for (int t = 0; t < m; ++t) {
      const GpuShape& s = tile[t];
      const float dx = __fmul_rn(__fsub_rn(fi, s.centre[0]), vx);
      const float dy = __fmul_rn(__fsub_rn(fj, s.centre[1]), vy);
      const float dz = __fmul_rn(__fsub_rn(fk, s.centre[2]), vz);
      bool inside;
      if (s.sphere) {
        const float d2 =
            __fadd_rn(__fadd_rn(__fmul_rn(dx, dx), __fmul_rn(dy, dy)), __fmul_rn(dz, dz));
        inside = d2 <= s.r2;
      } else {
        inside = fabsf(dx) <= s.half[0] && fabsf(dy) <= s.half[1] && fabsf(dz) <= s.half[2];
      }
      if (inside) value = additive ? __fadd_rn(value, s.chi) : s.chi;
    }
  }
  if (active) chi[idx] = value;
}

}  // namespace

void rasterise_gpu(const Recipe& r, const std::vector<SynthShape>& shapes, float* chi,
                   DeviceBuffer& scratch, cudaStream_t s) {
  const int64_t n = r.volume_size;
  if (shapes.empty() || n <= 0) return;
  DQ_CHECK(shapes.size() < (size_t{1} << 30), "too many shapes: ", shapes.size());
  std::vector<GpuShape> table(shapes.size());
  for (size_t t = 0; t < shapes.size(); ++t) {
    const SynthShape& x = shapes[t];
    GpuShape& g = table[t];
    std::memset(&g, 0, sizeof g);
    for (int a = 0; a < 3; ++a) {
      g.centre[a] = x.centre[a];
      g.half[a] = x.size[a] * 0.5f;
    }
    g.r2 = g.half[0] * g.half[0];
    g.chi = x.chi;
    g.sphere = x.kind == ShapeKind::sphere ? 1 : 0;
  }
  const size_t bytes = shape_table_bytes(table.size());
  if (scratch.size() < bytes) scratch = DeviceBuffer(bytes);
  // Synchronous copy: `table` is a local, and the kernel must see all of it.
  DQ_CUDA(cudaMemcpyAsync(scratch.data(), table.data(), bytes, cudaMemcpyHostToDevice, s));
  DQ_CUDA(cudaStreamSynchronize(s));
  const std::array<float, 3> v = raster_voxel_mm(r);
  const int64_t total = n * n * n;
  const int64_t blocks = (total + detail::kThreads - 1) / detail::kThreads;
  DQ_LAUNCH(rasterise_k, static_cast<unsigned>(blocks), detail::kThreads, 0, s)
  (static_cast<const GpuShape*>(scratch.data()), static_cast<int>(table.size()), n, v[0], v[1],
   v[2], r.additive ? 1 : 0, chi);
  DQ_CUDA(cudaGetLastError());
}

size_t shape_table_bytes(size_t shapes) {
  return sizeof(GpuShape) * shapes;
}

}  // namespace dq
