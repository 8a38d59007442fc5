// cuFFT dipole inversions and CG refinement; see cuda/qsm/inversion.h. Each
// function mirrors its CPU twin (core/qsm/tkd.cpp, core/qsm/inversion.cpp,
// core/qsm/refine.cpp) step for step: the same filters (computed on the host by
// the CPU code), pad -> R2C -> filter -> C2R -> 1/N scale -> crop, and the
// ADMM / CG updates in the same order. Products that the CPU does without
// fused multiply-add use __fmul_rn / __fadd_rn so nvcc cannot contract them.
// Reductions accumulate in double, per block, and the block partials are
// summed on the host in a fixed order, so results are deterministic.
#include <cufft.h>

#include <algorithm>
#include <cmath>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/qsm/tkd.h"
#include "cuda/check.h"
#include "cuda/launch.h"
#include "cuda/memory.h"
#include "cuda/nn/kernels.h"
#include "cuda/qsm/inversion.h"

namespace dq {

namespace {

using detail::grid_for;
using detail::kThreads;

constexpr int kReduceBlocks = 1024;  // partial sums copied back per reduction

__device__ __forceinline__ int64_t thread_index() {
  return blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_stride() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// buf (padded grid) = 0 outside, in inside.
__global__ void pad_k(const float* in, int64_t nz, int64_t ny, int64_t nx, int64_t pad,
                      float* buf) {
  const int64_t gz = nz + 2 * pad, gy = ny + 2 * pad, gx = nx + 2 * pad, total = gz * gy * gx;
  for (int64_t idx = thread_index(); idx < total; idx += thread_stride()) {
    const int64_t x = idx % gx - pad, y = idx / gx % gy - pad, z = idx / (gx * gy) - pad;
    const bool inside = x >= 0 && x < nx && y >= 0 && y < ny && z >= 0 && z < nz;
    buf[idx] = inside ? in[(z * ny + y) * nx + x] : 0.0f;
  }
}

// out = crop(buf) * scale.
__global__ void crop_k(const float* buf, int64_t nz, int64_t ny, int64_t nx, int64_t pad,
                       float scale, float* out) {
  const int64_t gy = ny + 2 * pad, gx = nx + 2 * pad, total = nz * ny * nx;
  for (int64_t idx = thread_index(); idx < total; idx += thread_stride()) {
    const int64_t x = idx % nx, y = idx / nx % ny, z = idx / (nx * ny);
    out[idx] = __fmul_rn(buf[((z + pad) * gy + (y + pad)) * gx + (x + pad)], scale);
  }
}

__global__ void filter_k(cufftComplex* s, const float* d, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += thread_stride()) {
    s[i].x = __fmul_rn(s[i].x, d[i]);
    s[i].y = __fmul_rn(s[i].y, d[i]);
  }
}

__global__ void mask_k(float* v, const uint8_t* m, int64_t n) {
  for (int64_t i = thread_index(); i < n; i += thread_stride())
    if (m[i] == 0) v[i] = 0.0f;
}

// out = m ? a - b : 0 (m nullable).
__global__ void masked_diff_k(const float* a, const float* b, const uint8_t* m, float* out,
                              int64_t n) {
  for (int64_t i = thread_index(); i < n; i += thread_stride())
    out[i] = (m == nullptr || m[i] != 0) ? __fsub_rn(a[i], b[i]) : 0.0f;
}

// s = (D f^ + rho s) / (D^2 + rho |G|^2), the ADMM chi-update in k-space.
__global__ void tv_rhs_k(cufftComplex* s, const cufftComplex* dfh, const float* inv_den, float rho,
                         int64_t n) {
  for (int64_t i = thread_index(); i < n; i += thread_stride()) {
    s[i].x = __fmul_rn(__fadd_rn(dfh[i].x, __fmul_rn(rho, s[i].x)), inv_den[i]);
    s[i].y = __fmul_rn(__fadd_rn(dfh[i].y, __fmul_rn(rho, s[i].y)), inv_den[i]);
  }
}

struct Grid {
  int64_t nz, ny, nx;
};

// Flat index of the periodic neighbour of (z, y, x) one step along `axis`
// (0 = x, 1 = y, 2 = z), forwards (step 1) or backwards (step -1).
__device__ __forceinline__ int64_t neighbour(const Grid& g, int64_t z, int64_t y, int64_t x,
                                             int axis, int step) {
  if (axis == 0) x = (x + step + g.nx) % g.nx;
  if (axis == 1) y = (y + step + g.ny) % g.ny;
  if (axis == 2) z = (z + step + g.nz) % g.nz;
  return (z * g.ny + y) * g.nx + x;
}

// w = sum_a G_a^T (z_a - u_a), G^T v(r) = (v(r - e) - v(r)) / h.
__global__ void tv_div_k(const float* z0, const float* z1, const float* z2, const float* u0,
                         const float* u1, const float* u2, Grid g, float ih0, float ih1, float ih2,
                         float* w) {
  const int64_t total = g.nz * g.ny * g.nx;
  const float* zs[3] = {z0, z1, z2};
  const float* us[3] = {u0, u1, u2};
  const float ih[3] = {ih0, ih1, ih2};
  for (int64_t i = thread_index(); i < total; i += thread_stride()) {
    const int64_t x = i % g.nx, y = i / g.nx % g.ny, z = i / (g.nx * g.ny);
    float acc = 0.0f;
    for (int a = 0; a < 3; ++a) {
      const int64_t j = neighbour(g, z, y, x, a, -1);
      const float vj = __fsub_rn(zs[a][j], us[a][j]), vi = __fsub_rn(zs[a][i], us[a][i]);
      acc = __fadd_rn(acc, __fmul_rn(__fsub_rn(vj, vi), ih[a]));
    }
    w[i] = acc;
  }
}

// z_a = shrink(G_a chi + u_a, t); u_a = G_a chi + u_a - z_a.
__global__ void tv_shrink_k(const float* chi, float* z0, float* z1, float* z2, float* u0, float* u1,
                            float* u2, Grid g, float ih0, float ih1, float ih2, float t) {
  const int64_t total = g.nz * g.ny * g.nx;
  float* zs[3] = {z0, z1, z2};
  float* us[3] = {u0, u1, u2};
  const float ih[3] = {ih0, ih1, ih2};
  for (int64_t i = thread_index(); i < total; i += thread_stride()) {
    const int64_t x = i % g.nx, y = i / g.nx % g.ny, z = i / (g.nx * g.ny);
    for (int a = 0; a < 3; ++a) {
      const int64_t j = neighbour(g, z, y, x, a, 1);
      const float v = __fadd_rn(__fmul_rn(__fsub_rn(chi[j], chi[i]), ih[a]), us[a][i]);
      const float zi = v > t ? __fsub_rn(v, t) : (v < -t ? __fadd_rn(v, t) : 0.0f);
      zs[a][i] = zi;
      us[a][i] = __fsub_rn(v, zi);
    }
  }
}

// out = sum_a |G_a chi|, the anisotropic TV density.
__global__ void tv_abs_k(const float* chi, Grid g, float ih0, float ih1, float ih2, float* out) {
  const int64_t total = g.nz * g.ny * g.nx;
  const float ih[3] = {ih0, ih1, ih2};
  for (int64_t i = thread_index(); i < total; i += thread_stride()) {
    const int64_t x = i % g.nx, y = i / g.nx % g.ny, z = i / (g.nx * g.ny);
    float acc = 0.0f;
    for (int a = 0; a < 3; ++a)
      acc += fabsf(__fmul_rn(__fsub_rn(chi[neighbour(g, z, y, x, a, 1)], chi[i]), ih[a]));
    out[i] = acc;
  }
}

enum class Reduce { dot, sqdiff, sum };

template <Reduce R>
__global__ void reduce_k(const float* a, const float* b, int64_t n, double* partials) {
  __shared__ double sh[kThreads];
  double s = 0.0;
  for (int64_t i = thread_index(); i < n; i += thread_stride()) {
    if (R == Reduce::dot) s += static_cast<double>(a[i]) * b[i];
    if (R == Reduce::sqdiff) {
      const double d = static_cast<double>(a[i]) - b[i];
      s += d * d;
    }
    if (R == Reduce::sum) s += a[i];
  }
  sh[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w /= 2) {
    if (static_cast<int>(threadIdx.x) < w) sh[threadIdx.x] += sh[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) partials[blockIdx.x] = sh[0];
}

void check_launch() {
  DQ_CUDA(cudaGetLastError());
}

// Device scratch for reductions and the host side of the sum.
class Reducer {
 public:
  Reducer() : partials_(sizeof(double) * kReduceBlocks), host_(kReduceBlocks) {}
  template <Reduce R>
  double run(const float* a, const float* b, int64_t n) {
    const unsigned blocks = std::min<unsigned>(grid_for(n), kReduceBlocks);
    DQ_LAUNCH(reduce_k<R>, blocks, kThreads, 0, nullptr)
    (a, b, n, static_cast<double*>(partials_.data()));
    check_launch();
    DQ_CUDA(cudaMemcpy(host_.data(), partials_.data(), sizeof(double) * blocks,
                       cudaMemcpyDeviceToHost));
    double s = 0.0;
    for (unsigned i = 0; i < blocks; ++i) s += host_[i];
    return s;
  }

 private:
  DeviceBuffer partials_;
  std::vector<double> host_;
};

float* fptr(DeviceBuffer& b) {
  return static_cast<float*>(b.data());
}

DeviceBuffer upload(const void* host, size_t bytes) {
  DeviceBuffer d(bytes);
  DQ_CUDA(cudaMemcpy(d.data(), host, bytes, cudaMemcpyHostToDevice));
  return d;
}
DeviceBuffer upload(const std::vector<float>& v) {
  return upload(v.data(), sizeof(float) * v.size());
}
void download(const float* dev, int64_t n, float* host) {
  DQ_CUDA(cudaMemcpy(host, dev, sizeof(float) * static_cast<size_t>(n), cudaMemcpyDeviceToHost));
}

// R2C / C2R plans and buffers for one padded grid; filter() is the GPU
// PaddedFilter::apply (pad, FFT, multiply by a real half-spectrum filter,
// inverse FFT scaled by 1/N, crop).
class GpuFft {
 public:
  explicit GpuFft(const Dims3& g) : g_(g) {
    DQ_CHECK(g.nz > 0 && g.ny > 0 && g.nx > 0, "empty FFT grid");
    DQ_CHECK(g.numel() < (int64_t{1} << 31), "FFT grid too large");
    real_ = DeviceBuffer(sizeof(float) * static_cast<size_t>(g.numel()));
    spec_ = DeviceBuffer(sizeof(cufftComplex) * static_cast<size_t>(g.half_numel()));
    const int nz = static_cast<int>(g.nz), ny = static_cast<int>(g.ny), nx = static_cast<int>(g.nx);
    try {  // a throwing constructor skips the destructor: release what was made
      DQ_CUFFT(cufftPlan3d(&r2c_, nz, ny, nx, CUFFT_R2C));
      have_r2c_ = true;
      DQ_CUFFT(cufftPlan3d(&c2r_, nz, ny, nx, CUFFT_C2R));
      have_c2r_ = true;
    } catch (...) {
      if (have_r2c_) cufftDestroy(r2c_);
      throw;
    }
  }
  ~GpuFft() {
    if (have_r2c_) cufftDestroy(r2c_);
    if (have_c2r_) cufftDestroy(c2r_);
  }
  GpuFft(const GpuFft&) = delete;
  GpuFft& operator=(const GpuFft&) = delete;

  float* real() { return fptr(real_); }
  cufftComplex* spectrum() { return static_cast<cufftComplex*>(spec_.data()); }
  void forward() { DQ_CUFFT(cufftExecR2C(r2c_, real(), spectrum())); }
  void forward_into(cufftComplex* out) { DQ_CUFFT(cufftExecR2C(r2c_, real(), out)); }
  // spectrum() -> real(), unscaled; spectrum() is garbage afterwards.
  void inverse_unscaled() { DQ_CUFFT(cufftExecC2R(c2r_, spectrum(), real())); }
  float scale() const { return 1.0f / static_cast<float>(g_.numel()); }

  // out = crop(IFFT(filter . FFT(pad(in)))); in and out are (dims), device.
  void filter(const float* d_filter, const float* in, const Dims3& dims, int64_t pad, float* out) {
    DQ_CHECK(dims.padded(pad) == g_, "FFT planned for another grid");
    DQ_LAUNCH(pad_k, grid_for(g_.numel()), kThreads, 0, nullptr)
    (in, dims.nz, dims.ny, dims.nx, pad, real());
    check_launch();
    forward();
    DQ_LAUNCH(filter_k, grid_for(g_.half_numel()), kThreads, 0, nullptr)
    (spectrum(), d_filter, g_.half_numel());
    check_launch();
    inverse_unscaled();
    DQ_LAUNCH(crop_k, grid_for(dims.numel()), kThreads, 0, nullptr)
    (real(), dims.nz, dims.ny, dims.nx, pad, scale(), out);
    check_launch();
  }

 private:
  Dims3 g_;
  DeviceBuffer real_, spec_;
  cufftHandle r2c_ = 0, c2r_ = 0;
  bool have_r2c_ = false, have_c2r_ = false;
};

// chi = crop(IFFT(filter . FFT(pad(field)))) for a host filter on the padded grid.
void filter_host(const float* field, const Dims3& dims, int64_t pad,
                 const std::vector<float>& half_filter, float* chi) {
  const Dims3 g = dims.padded(pad);
  GpuFft fft(g);
  DeviceBuffer filt = upload(half_filter);
  DeviceBuffer in = upload(field, sizeof(float) * static_cast<size_t>(dims.numel()));
  DeviceBuffer out(sizeof(float) * static_cast<size_t>(dims.numel()));
  fft.filter(fptr(filt), fptr(in), dims, pad, fptr(out));
  download(fptr(out), dims.numel(), chi);
}

void apply_mask_host(const uint8_t* mask, int64_t n, float* chi) {
  if (mask == nullptr) return;
  for (int64_t i = 0; i < n; ++i)
    if (mask[i] == 0) chi[i] = 0.0f;
}

}  // namespace

void cuda_tkd(const float* field, const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
              double threshold, double k0_value, int64_t pad, float* chi) {
  if (pad < 0) fail("TKD padding must be >= 0, got ", pad);
  filter_host(field, dims, pad,
              tkd_inverse_kernel(dims.padded(pad), voxel_mm, b0_dir, threshold, k0_value), chi);
}

void cuda_tikhonov(const float* field, const uint8_t* mask, const Dims3& dims, const Vec3& voxel_mm,
                   const Vec3& b0_dir, double lambda, TikhonovReg reg, double k0_value, int64_t pad,
                   float* chi) {
  if (pad < 0) fail("Tikhonov padding must be >= 0, got ", pad);
  filter_host(field, dims, pad,
              tikhonov_inverse_kernel(dims.padded(pad), voxel_mm, b0_dir, lambda, reg, k0_value),
              chi);
  apply_mask_host(mask, dims.numel(), chi);
}

int cuda_tv_admm(const float* field, const uint8_t* mask, const Dims3& dims, const Vec3& voxel_mm,
                 const Vec3& b0_dir, const TvOptions& opt, double k0_value, int64_t pad, float* chi,
                 std::vector<double>* objective) {
  opt.validate(pad);

  const Dims3 g = dims.padded(pad);
  const int64_t n = g.numel(), nh = g.half_numel();
  const size_t fbytes = sizeof(float) * static_cast<size_t>(n);
  // Filters on the host, exactly as the CPU computes them.
  const std::vector<float> d = dipole_kernel(g, voxel_mm, b0_dir, k0_value);
  const std::vector<float> g2 = gradient_symbol_sq(g, voxel_mm);
  const float rho = static_cast<float>(opt.rho);
  const float thresh = static_cast<float>(opt.lambda / opt.rho);
  std::vector<float> inv_den(static_cast<size_t>(nh));
  for (size_t k = 0; k < inv_den.size(); ++k) {
    const float den = d[k] * d[k] + rho * g2[k];
    inv_den[k] = den > 0.0f ? 1.0f / den : 0.0f;
  }
  const float ih[3] = {static_cast<float>(1.0 / voxel_mm[0]), static_cast<float>(1.0 / voxel_mm[1]),
                       static_cast<float>(1.0 / voxel_mm[2])};
  const Grid grid{g.nz, g.ny, g.nx};

  GpuFft fft(g);
  Reducer red;
  DeviceBuffer dk = upload(d), idn = upload(inv_den);
  DeviceBuffer fp(fbytes), x(fbytes), x_prev(fbytes), w(fbytes), tmp(fbytes);
  DeviceBuffer dfh(sizeof(cufftComplex) * static_cast<size_t>(nh));
  std::vector<DeviceBuffer> z, u;
  for (int a = 0; a < 3; ++a) {
    z.emplace_back(fbytes);
    u.emplace_back(fbytes);
    DQ_CUDA(cudaMemset(z.back().data(), 0, fbytes));
    DQ_CUDA(cudaMemset(u.back().data(), 0, fbytes));
  }
  {
    DeviceBuffer f = upload(field, sizeof(float) * static_cast<size_t>(dims.numel()));
    DQ_LAUNCH(pad_k, grid_for(n), kThreads, 0, nullptr)
    (fptr(f), dims.nz, dims.ny, dims.nx, pad, fptr(fp));
    check_launch();
  }
  DQ_CUDA(cudaMemcpy(fft.real(), fptr(fp), fbytes, cudaMemcpyDeviceToDevice));
  auto* dfhp = static_cast<cufftComplex*>(dfh.data());
  fft.forward_into(dfhp);
  DQ_LAUNCH(filter_k, grid_for(nh), kThreads, 0, nullptr)(dfhp, fptr(dk), nh);
  check_launch();

  if (objective) objective->clear();
  int it = 0;
  while (it < opt.iterations) {
    ++it;
    DQ_LAUNCH(tv_div_k, grid_for(n), kThreads, 0, nullptr)
    (fptr(z[0]), fptr(z[1]), fptr(z[2]), fptr(u[0]), fptr(u[1]), fptr(u[2]), grid, ih[0], ih[1],
     ih[2], fft.real());
    check_launch();
    fft.forward();
    DQ_LAUNCH(tv_rhs_k, grid_for(nh), kThreads, 0, nullptr)
    (fft.spectrum(), dfhp, fptr(idn), rho, nh);
    check_launch();
    fft.inverse_unscaled();
    std::swap(x, x_prev);
    DQ_LAUNCH(crop_k, grid_for(n), kThreads, 0, nullptr)
    (fft.real(), g.nz, g.ny, g.nx, 0, fft.scale(), fptr(x));
    check_launch();
    DQ_LAUNCH(tv_shrink_k, grid_for(n), kThreads, 0, nullptr)
    (fptr(x), fptr(z[0]), fptr(z[1]), fptr(z[2]), fptr(u[0]), fptr(u[1]), fptr(u[2]), grid, ih[0],
     ih[1], ih[2], thresh);
    check_launch();
    if (objective) {
      fft.filter(fptr(dk), fptr(x), g, 0, fptr(tmp));
      const double data = red.run<Reduce::sqdiff>(fptr(tmp), fptr(fp), n);
      DQ_LAUNCH(tv_abs_k, grid_for(n), kThreads, 0, nullptr)
      (fptr(x), grid, ih[0], ih[1], ih[2], fptr(tmp));
      check_launch();
      const double tv = red.run<Reduce::sum>(fptr(tmp), nullptr, n);
      objective->push_back(0.5 * data + opt.lambda * tv);
    }
    const double dn = red.run<Reduce::sqdiff>(fptr(x), fptr(x_prev), n);
    const double xn = red.run<Reduce::dot>(fptr(x), fptr(x), n);
    if (it > 1 && xn > 0.0 && std::sqrt(dn / xn) < opt.tolerance) break;
  }
  DeviceBuffer out(sizeof(float) * static_cast<size_t>(dims.numel()));
  DQ_LAUNCH(crop_k, grid_for(dims.numel()), kThreads, 0, nullptr)
  (fptr(x), dims.nz, dims.ny, dims.nx, pad, 1.0f, fptr(out));
  check_launch();
  download(fptr(out), dims.numel(), chi);
  apply_mask_host(mask, dims.numel(), chi);
  return it;
}

void cuda_refine_chi(const float* field, const float* chi_net, const uint8_t* mask,
                     const Dims3& dims, const Vec3& voxel_mm, const Vec3& b0_dir,
                     const RefineOptions& opt, float* chi, std::vector<double>* objective) {
  if (opt.iterations < 0) fail("refinement iterations must be >= 0, got ", opt.iterations);
  if (!(opt.lambda > 0.0)) fail("refinement lambda must be positive, got ", opt.lambda);
  if (opt.pad < 0) fail("refinement padding must be >= 0, got ", opt.pad);
  const int64_t n = dims.numel();
  const size_t fbytes = sizeof(float) * static_cast<size_t>(n);
  GpuFft fft(dims.padded(opt.pad));
  Reducer red;
  DeviceBuffer dk = upload(dipole_kernel(dims.padded(opt.pad), voxel_mm, b0_dir, opt.k0_value));
  DeviceBuffer f = upload(field, fbytes), net = upload(chi_net, fbytes);
  DeviceBuffer m;
  if (mask) m = upload(mask, static_cast<size_t>(n));
  const auto* mp = static_cast<const uint8_t*>(m.data());
  DeviceBuffer x(fbytes), r(fbytes), p(fbytes), ap(fbytes), tmp(fbytes);
  const float lambda = static_cast<float>(opt.lambda);

  auto apply = [&](const float* in, float* out) { fft.filter(fptr(dk), in, dims, opt.pad, out); };
  auto masked = [&](float* v) {
    if (!mp) return;
    DQ_LAUNCH(mask_k, grid_for(n), kThreads, 0, nullptr)(v, mp, n);
    check_launch();
  };
  auto objective_now = [&]() {
    apply(fptr(x), fptr(tmp));
    DQ_LAUNCH(masked_diff_k, grid_for(n), kThreads, 0, nullptr)
    (fptr(tmp), fptr(f), mp, fptr(tmp), n);
    check_launch();
    const double data = red.run<Reduce::dot>(fptr(tmp), fptr(tmp), n);
    return data + opt.lambda * red.run<Reduce::sqdiff>(fptr(x), fptr(net), n);
  };

  cuda_copy(fptr(net), fptr(x), n, nullptr);
  // r = D M (f - D chi_net)
  apply(fptr(x), fptr(tmp));
  DQ_LAUNCH(masked_diff_k, grid_for(n), kThreads, 0, nullptr)(fptr(f), fptr(tmp), mp, fptr(tmp), n);
  check_launch();
  apply(fptr(tmp), fptr(r));
  cuda_copy(fptr(r), fptr(p), n, nullptr);
  double rr = red.run<Reduce::dot>(fptr(r), fptr(r), n);
  if (objective) {
    objective->clear();
    objective->push_back(objective_now());
  }
  for (int it = 0; it < opt.iterations && rr > 0.0; ++it) {
    apply(fptr(p), fptr(tmp));
    masked(fptr(tmp));
    apply(fptr(tmp), fptr(ap));
    cuda_axpy(lambda, fptr(p), fptr(ap), n, nullptr);
    const double pap = red.run<Reduce::dot>(fptr(p), fptr(ap), n);
    if (!(pap > 0.0)) break;  // round-off at convergence, as on the CPU
    const float alpha = static_cast<float>(rr / pap);
    cuda_axpy(alpha, fptr(p), fptr(x), n, nullptr);
    cuda_axpy(-alpha, fptr(ap), fptr(r), n, nullptr);
    const double rr_new = red.run<Reduce::dot>(fptr(r), fptr(r), n);
    const float beta = static_cast<float>(rr_new / rr);
    rr = rr_new;
    cuda_scale(fptr(p), beta, n, nullptr);
    cuda_axpy(1.0f, fptr(r), fptr(p), n, nullptr);
    if (objective) objective->push_back(objective_now());
  }
  download(fptr(x), n, chi);
}

}  // namespace dq
