// GpuSynth and generate_patches_gpu; see synth/synth_gpu.h.
#include "core/error.h"
#include "core/nn/philox.h"
#include "cuda/check.h"
#include "cuda/launch.h"
#include "synth/synth_gpu.h"

namespace dq {

namespace {

// field[m] += noise_std * z_m, with z_m the host's synth_gauss(key, m):
// the same counters and the same double-precision Box-Muller (device log
// and cos differ from glibc's by an ulp of a double, invisible after the
// rounding to fp32 almost always, and within 1e-5 relative always).
__global__ void noise_k(float* field, int64_t total, uint64_t key, double noise_std) {
  constexpr double kTwoPi = 6.28318530717958647692;
  for (int64_t m = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; m < total;
       m += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint64_t c = static_cast<uint64_t>(m);
    const double u1 = 1.0 - static_cast<double>(philox_uniform(key, 2 * c));
    const double u2 = static_cast<double>(philox_uniform(key, 2 * c + 1));
    const double z = sqrt(-2.0 * log(u1)) * cos(kTwoPi * u2);
    field[m] = __fadd_rn(field[m], static_cast<float>(noise_std * z));
  }
}

// Zeros vol (n, n, n) outside the region: region_contains's rule, with the
// same fp32 operations in the same order (no contraction).
__global__ void region_k(float* vol, int64_t n, SynthRegion g) {
  const int64_t total = n * n * n;
  for (int64_t m = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; m < total;
       m += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = m % n, j = m / n % n, k = m / (n * n);
    const float ux = __fmul_rn(__fsub_rn(static_cast<float>(i), g.centre[0]), g.inv_axis[0]);
    const float uy = __fmul_rn(__fsub_rn(static_cast<float>(j), g.centre[1]), g.inv_axis[1]);
    const float uz = __fmul_rn(__fsub_rn(static_cast<float>(k), g.centre[2]), g.inv_axis[2]);
    const float d2 = __fadd_rn(__fadd_rn(__fmul_rn(ux, ux), __fmul_rn(uy, uy)), __fmul_rn(uz, uz));
    if (!(d2 <= 1.0f)) vol[m] = 0.0f;
  }
}

void apply_region_gpu(const SynthRegion& g, int64_t n, float* vol, cudaStream_t s) {
  if (!g.active) return;
  DQ_LAUNCH(region_k, detail::grid_for(n * n * n), detail::kThreads, 0, s)(vol, n, g);
  DQ_CUDA(cudaGetLastError());
}

// out (count, P, P, P) gathers the patches with corners (z, y, x) from
// vol (n, n, n); one thread per output element.
__global__ void gather_patches_k(const float* vol, int64_t n, const int64_t* corners, int count,
                                 int64_t P, float* out) {
  const int64_t per = P * P * P, total = per * count;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t p = idx / per, r = idx % per;
    const int64_t i = r % P, j = r / P % P, k = r / (P * P);
    const int64_t* c = corners + 3 * p;
    out[idx] = vol[((c[0] + k) * n + (c[1] + j)) * n + (c[2] + i)];
  }
}

size_t volume_bytes(const Recipe& r) {
  return sizeof(float) * static_cast<size_t>(r.volume_size * r.volume_size * r.volume_size);
}

}  // namespace

GpuSynth::GpuSynth(const Recipe& r, cudaStream_t stream) : r_(r), stream_(stream) {
  r_.validate();
  const int64_t n = r_.volume_size;
  chi_ = DeviceBuffer(volume_bytes(r_));
  field_ = DeviceBuffer(volume_bytes(r_));
  shapes_ = DeviceBuffer(shape_table_bytes(static_cast<size_t>(r_.cubes_max) +
                                           static_cast<size_t>(r_.spheres_max) +
                                           static_cast<size_t>(r_.rects_max)));
  dipole_ = std::make_unique<CudaDipole>(Dims3{n, n, n}, r_.pad, stream_);
}

Vec3 GpuSynth::generate(uint64_t seed, int64_t volume) {
  const int64_t n = r_.volume_size, total = n * n * n;
  const std::vector<SynthShape> shapes = draw_shapes(r_, seed, volume);
  DQ_CUDA(cudaMemsetAsync(chi_.data(), 0, volume_bytes(r_), stream_));
  rasterise_gpu(r_, shapes, static_cast<float*>(chi_.data()), shapes_, stream_);
  const SynthRegion region = draw_region(r_, seed, volume);
  apply_region_gpu(region, n, static_cast<float*>(chi_.data()), stream_);
  const Vec3 b0 = volume_b0(r_, seed, volume);
  dipole_->set_kernel(r_.voxel_mm, b0, r_.dipole_k0);
  dipole_->forward(chi(), static_cast<float*>(field_.data()));
  const double noise_std = volume_noise_std(r_, seed, volume);
  if (noise_std != 0) {
    const uint64_t kn = key_for(synth_volume_key(seed, volume), kSynthNoise);
    DQ_LAUNCH(noise_k, detail::grid_for(total), detail::kThreads, 0, stream_)
    (static_cast<float*>(field_.data()), total, kn, noise_std);
    DQ_CUDA(cudaGetLastError());
  }
  apply_region_gpu(region, n, static_cast<float*>(field_.data()), stream_);
  current_ = volume;
  current_seed_ = seed;
  return b0;
}

void GpuSynth::cut_patches(uint64_t seed, int64_t volume, int count, float* field_out,
                           float* chi_out) {
  DQ_CHECK(volume == current_ && seed == current_seed_, "cut_patches for volume ", volume,
           " but the GPU holds volume ", current_);
  if (count <= 0) return;
  std::vector<int64_t> corners(3 * static_cast<size_t>(count));
  for (int p = 0; p < count; ++p) {
    const std::array<int64_t, 3> c = draw_patch_corner(r_, seed, volume, p);
    for (size_t a = 0; a < 3; ++a) corners[3 * static_cast<size_t>(p) + a] = c[a];
  }
  const size_t bytes = sizeof(int64_t) * corners.size();
  if (corners_.size() < bytes) corners_ = DeviceBuffer(bytes);
  // Synchronised: `corners` is a local the kernel must see whole.
  DQ_CUDA(cudaMemcpyAsync(corners_.data(), corners.data(), bytes, cudaMemcpyHostToDevice, stream_));
  DQ_CUDA(cudaStreamSynchronize(stream_));
  const int64_t P = r_.patch_size, total = P * P * P * count;
  const auto* c = static_cast<const int64_t*>(corners_.data());
  DQ_LAUNCH(gather_patches_k, detail::grid_for(total), detail::kThreads, 0, stream_)
  (field(), r_.volume_size, c, count, P, field_out);
  DQ_LAUNCH(gather_patches_k, detail::grid_for(total), detail::kThreads, 0, stream_)
  (chi(), r_.volume_size, c, count, P, chi_out);
  DQ_CUDA(cudaGetLastError());
}

void GpuSynth::cut_patches_to_host(uint64_t seed, int64_t volume, int count, float* field_out,
                                   float* chi_out) {
  const int64_t P = r_.patch_size;
  const size_t bytes = sizeof(float) * static_cast<size_t>(P * P * P * count);
  if (patch_field_.size() < bytes) {
    patch_field_ = DeviceBuffer(bytes);
    patch_chi_ = DeviceBuffer(bytes);
  }
  cut_patches(seed, volume, count, static_cast<float*>(patch_field_.data()),
              static_cast<float*>(patch_chi_.data()));
  DQ_CUDA(cudaMemcpyAsync(field_out, patch_field_.data(), bytes, cudaMemcpyDeviceToHost, stream_));
  DQ_CUDA(cudaMemcpyAsync(chi_out, patch_chi_.data(), bytes, cudaMemcpyDeviceToHost, stream_));
  DQ_CUDA(cudaStreamSynchronize(stream_));
}

void GpuSynth::download(float* chi_out, float* field_out) {
  const size_t bytes = volume_bytes(r_);
  DQ_CUDA(cudaMemcpyAsync(chi_out, chi_.data(), bytes, cudaMemcpyDeviceToHost, stream_));
  DQ_CUDA(cudaMemcpyAsync(field_out, field_.data(), bytes, cudaMemcpyDeviceToHost, stream_));
  DQ_CUDA(cudaStreamSynchronize(stream_));
}

PatchSet generate_patches_gpu(const Recipe& r, uint64_t seed, int64_t first_volume,
                              int64_t n_volumes) {
  PatchSet out = empty_patch_set(r, first_volume, n_volumes);
  if (n_volumes == 0) return out;
  GpuSynth gen(r, nullptr);
  const int64_t P = r.patch_size;
  const int64_t stride = r.patches_per_volume * P * P * P;
  for (int64_t v = 0; v < n_volumes; ++v) {
    gen.generate(seed, first_volume + v);
    gen.cut_patches_to_host(seed, first_volume + v, r.patches_per_volume,
                            out.field.f32() + v * stride, out.chi.f32() + v * stride);
  }
  return out;
}

}  // namespace dq
