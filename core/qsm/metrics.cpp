#include "core/qsm/metrics.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "core/error.h"
#include "core/qsm/dipole.h"

namespace dq {

namespace {

constexpr double kLogSigma = 1.5;       // LoG width, in (smallest) voxels, as in the 2016 challenge
constexpr double kLogTruncation = 5.0;  // kernel half-width in sigmas: 7 voxels, a 15^3 kernel
constexpr int64_t kSsimRadius = 2;      // 5^3 window
constexpr double kXsimC1 = 1e-4, kXsimC2 = 1e-6;  // Milovic et al. 2024: K1 0.01, K2 0.001, L 1 ppm

bool inside(const uint8_t* mask, int64_t i) {
  return mask == nullptr || mask[i] != 0;
}

// Half-widths (z, y, x) of the LoG kernel and the kernel itself,
// (2hz+1, 2hy+1, 2hx+1) with x fastest. Distances are measured in units of
// the smallest voxel edge so the filter is isotropic in mm on anisotropic
// grids and is exactly the challenge's 15^3, sigma 1.5 filter on isotropic ones.
struct LogKernel {
  int64_t hz = 0, hy = 0, hx = 0;
  std::vector<double> w;
};

LogKernel log_kernel(const std::array<double, 3>& voxel_mm) {
  for (double v : voxel_mm)
    if (!(v > 0.0)) fail("voxel size must be positive, got ", v, " mm");
  const double vmin = std::min({voxel_mm[0], voxel_mm[1], voxel_mm[2]});
  const double sx = voxel_mm[0] / vmin, sy = voxel_mm[1] / vmin, sz = voxel_mm[2] / vmin;
  LogKernel k;
  k.hx = static_cast<int64_t>(std::floor(kLogTruncation * kLogSigma / sx));
  k.hy = static_cast<int64_t>(std::floor(kLogTruncation * kLogSigma / sy));
  k.hz = static_cast<int64_t>(std::floor(kLogTruncation * kLogSigma / sz));
  const double s2 = kLogSigma * kLogSigma;
  std::vector<double> g, r2s;
  for (int64_t z = -k.hz; z <= k.hz; ++z)
    for (int64_t y = -k.hy; y <= k.hy; ++y)
      for (int64_t x = -k.hx; x <= k.hx; ++x) {
        const double r2 = (z * sz) * (z * sz) + (y * sy) * (y * sy) + (x * sx) * (x * sx);
        g.push_back(std::exp(-r2 / (2.0 * s2)));
        r2s.push_back(r2);
      }
  double gsum = 0.0;
  for (double v : g) gsum += v;
  // Laplacian of the normalised Gaussian, del^2 g = g (r^2 - 3 s^2) / s^4,
  // then shifted to sum to exactly zero (as MATLAB's fspecial3('log')) so a
  // constant region gives no response despite the truncation.
  k.w.resize(g.size());
  double lsum = 0.0;
  for (size_t i = 0; i < g.size(); ++i) {
    k.w[i] = g[i] / gsum * (r2s[i] - 3.0 * s2) / (s2 * s2);
    lsum += k.w[i];
  }
  for (double& v : k.w) v -= lsum / static_cast<double>(k.w.size());
  return k;
}

// LoG of `in` (zero outside the grid), same size. The convolution is done
// by FFT on the grid padded by the largest half-width, so nothing wraps
// around; the kernel is symmetric, so its spectrum is real and the shared
// real-filter path (PaddedFilter) applies it.
void log_filter(const std::vector<float>& in, const Dims3& dims, const LogKernel& k,
                std::vector<float>& out) {
  const int64_t pad = std::max({k.hz, k.hy, k.hx});
  const Dims3 g = dims.padded(pad);
  Fft3 fft(g);
  float* buf = fft.real();
  std::fill(buf, buf + g.numel(), 0.0f);
  const int64_t wx = 2 * k.hx + 1, wy = 2 * k.hy + 1;
  for (int64_t z = -k.hz; z <= k.hz; ++z)
    for (int64_t y = -k.hy; y <= k.hy; ++y)
      for (int64_t x = -k.hx; x <= k.hx; ++x) {
        const int64_t cz = (z + g.nz) % g.nz, cy = (y + g.ny) % g.ny, cx = (x + g.nx) % g.nx;
        buf[(cz * g.ny + cy) * g.nx + cx] = static_cast<float>(
            k.w[static_cast<size_t>(((z + k.hz) * wy + (y + k.hy)) * wx + x + k.hx)]);
      }
  fft.forward();
  std::vector<float> filter(static_cast<size_t>(g.half_numel()));
  const std::complex<float>* s = fft.spectrum();
  for (size_t i = 0; i < filter.size(); ++i) filter[i] = s[i].real();
  out.resize(in.size());
  PaddedFilter(dims, pad, filter).apply(in.data(), out.data());
}

// In-place sum over a (2r+1)-voxel window, clipped at the ends, along lines
// of `n` elements `stride` apart: line (o, in) starts at o * n * stride + in,
// for o < outer_count and in < inner_count.
void box_sum_axis(std::vector<double>& a, int64_t outer_count, int64_t n, int64_t stride,
                  int64_t inner_count, int64_t r) {
  std::vector<double> line(static_cast<size_t>(n)), prefix(static_cast<size_t>(n + 1));
  for (int64_t o = 0; o < outer_count; ++o)
    for (int64_t in = 0; in < inner_count; ++in) {
      const int64_t base = o * n * stride + in;
      prefix[0] = 0.0;
      for (int64_t i = 0; i < n; ++i)
        prefix[static_cast<size_t>(i + 1)] =
            prefix[static_cast<size_t>(i)] + a[static_cast<size_t>(base + i * stride)];
      for (int64_t i = 0; i < n; ++i) {
        const int64_t lo = std::max<int64_t>(0, i - r), hi = std::min<int64_t>(n - 1, i + r);
        line[static_cast<size_t>(i)] =
            prefix[static_cast<size_t>(hi + 1)] - prefix[static_cast<size_t>(lo)];
      }
      for (int64_t i = 0; i < n; ++i)
        a[static_cast<size_t>(base + i * stride)] = line[static_cast<size_t>(i)];
    }
}

void box_sum(std::vector<double>& a, const Dims3& d, int64_t r) {
  box_sum_axis(a, d.nz * d.ny, d.nx, 1, 1, r);            // along x
  box_sum_axis(a, d.nz, d.ny, d.nx, d.nx, r);             // along y
  box_sum_axis(a, 1, d.nz, d.ny * d.nx, d.ny * d.nx, r);  // along z
}

// Window voxel count along one axis at index i, clipped at the grid ends.
int64_t window_count(int64_t i, int64_t n, int64_t r) {
  return std::min<int64_t>(n - 1, i + r) - std::max<int64_t>(0, i - r) + 1;
}

// Mean SSIM over the mask for two pairs of constants at once (XSIM and
// SSIM share the local statistics). As in QSM-CI's scorer, x and y are the
// volumes as given (not zeroed outside the mask; chi maps normally are),
// windows are clipped at the grid edges, and voxels whose denominator is 0
// are left out of the mean.
void windowed_ssim(const float* x, const float* y, const uint8_t* mask, const Dims3& d,
                   double c1_ssim, double c2_ssim, double& ssim, double& xsim) {
  const size_t n = static_cast<size_t>(d.numel());
  std::vector<double> sx(n), sy(n), sxx(n), syy(n), sxy(n);
  for (size_t i = 0; i < n; ++i) {
    const double a = x[i], b = y[i];
    sx[i] = a;
    sy[i] = b;
    sxx[i] = a * a;
    syy[i] = b * b;
    sxy[i] = a * b;
  }
  for (auto* v : {&sx, &sy, &sxx, &syy, &sxy}) box_sum(*v, d, kSsimRadius);
  double acc_ssim = 0.0, acc_xsim = 0.0;
  int64_t count = 0;
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t yy = 0; yy < d.ny; ++yy)
      for (int64_t xx = 0; xx < d.nx; ++xx) {
        const int64_t i = (z * d.ny + yy) * d.nx + xx;
        if (!inside(mask, i)) continue;
        const double w = static_cast<double>(window_count(z, d.nz, kSsimRadius) *
                                             window_count(yy, d.ny, kSsimRadius) *
                                             window_count(xx, d.nx, kSsimRadius));
        const size_t u = static_cast<size_t>(i);
        const double mx = sx[u] / w, my = sy[u] / w;
        // Population (1/N) moments over the window, as in Wang et al. 2004.
        const double vx = sxx[u] / w - mx * mx, vy = syy[u] / w - my * my;
        const double cxy = sxy[u] / w - mx * my;
        const double den_x = (mx * mx + my * my + kXsimC1) * (vx + vy + kXsimC2);
        if (!(den_x > 0.0)) continue;
        acc_xsim += (2.0 * mx * my + kXsimC1) * (2.0 * cxy + kXsimC2) / den_x;
        const double den_s = (mx * mx + my * my + c1_ssim) * (vx + vy + c2_ssim);
        acc_ssim += (2.0 * mx * my + c1_ssim) * (2.0 * cxy + c2_ssim) / den_s;
        ++count;
      }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  ssim = count > 0 ? acc_ssim / static_cast<double>(count) : nan;
  xsim = count > 0 ? acc_xsim / static_cast<double>(count) : nan;
}

}  // namespace

Metrics compute_metrics(const float* pred, const float* ref, const uint8_t* mask, int64_t nz,
                        int64_t ny, int64_t nx, const std::array<double, 3>& voxel_mm) {
  const Dims3 d{nz, ny, nx};
  if (nz <= 0 || ny <= 0 || nx <= 0) fail("metrics: empty volume");
  const int64_t total = d.numel();

  // First pass: means, range and the error moments.
  int64_t n = 0;
  double sr = 0.0, st = 0.0, se = 0.0, see = 0.0;
  double tmin = std::numeric_limits<double>::infinity(), tmax = -tmin;
  for (int64_t i = 0; i < total; ++i) {
    if (!inside(mask, i)) continue;
    const double r = pred[i], t = ref[i], e = r - t;
    ++n;
    sr += r;
    st += t;
    se += e;
    see += e * e;
    tmin = std::min(tmin, t);
    tmax = std::max(tmax, t);
  }
  if (n == 0) fail("metrics: the mask is empty");
  const double nd = static_cast<double>(n);
  const double rbar = sr / nd, tbar = st / nd;

  // Second pass: centred moments (stable for data with a large offset).
  double srr = 0.0, stt = 0.0, srt = 0.0, sdd = 0.0;
  for (int64_t i = 0; i < total; ++i) {
    if (!inside(mask, i)) continue;
    const double r = pred[i] - rbar, t = ref[i] - tbar;
    srr += r * r;
    stt += t * t;
    srt += r * t;
    sdd += (r - t) * (r - t);
  }
  if (!(stt > 0.0)) fail("metrics: the reference is constant inside the mask");

  Metrics m;
  m.nrmse = 100.0 * std::sqrt(sdd / stt);
  // r ~ a t + b by least squares; detrended r' = (r - b) / a, whose centred
  // value is (r - rbar) / a, so ||r'c - tc||^2 = srr/a^2 - 2 srt/a + stt.
  const double a = srt / stt;
  if (a != 0.0) {
    const double dd = srr / (a * a) - 2.0 * srt / a + stt;
    m.dnrmse = 100.0 * std::sqrt(std::max(0.0, dd) / stt);
  } else {
    m.dnrmse = m.nrmse;  // no linear trend to undo (QSM-CI's convention)
  }
  m.corr = srr > 0.0 ? srt / std::sqrt(srr * stt) : 0.0;
  m.err_mean = se / nd;
  m.err_std = std::sqrt(std::max(0.0, see / nd - m.err_mean * m.err_mean));
  const double range = tmax - tmin;
  const double rmse = std::sqrt(see / nd);
  m.psnr = rmse > 0.0 ? 20.0 * std::log10(range / rmse) : std::numeric_limits<double>::infinity();

  // Spatial metrics on the masked volumes (zero outside the mask).
  std::vector<float> rm(static_cast<size_t>(total)), tm(static_cast<size_t>(total));
  for (int64_t i = 0; i < total; ++i) {
    const bool in = inside(mask, i);
    rm[static_cast<size_t>(i)] = in ? pred[i] : 0.0f;
    tm[static_cast<size_t>(i)] = in ? ref[i] : 0.0f;
  }
  const LogKernel k = log_kernel(voxel_mm);
  std::vector<float> lr, lt;
  log_filter(rm, d, k, lr);
  log_filter(tm, d, k, lt);
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < lr.size(); ++i) {
    const double diff = static_cast<double>(lr[i]) - lt[i];
    num += diff * diff;
    den += static_cast<double>(lt[i]) * lt[i];
  }
  m.hfen = den > 0.0 ? 100.0 * std::sqrt(num / den) : std::numeric_limits<double>::quiet_NaN();

  const double c1 = (0.01 * range) * (0.01 * range), c2 = (0.03 * range) * (0.03 * range);
  windowed_ssim(pred, ref, mask, d, c1, c2, m.ssim, m.xsim);
  return m;
}

std::vector<LabelMean> label_means(const float* pred, const float* ref, const int32_t* labels,
                                   const uint8_t* mask, int64_t nz, int64_t ny, int64_t nx) {
  struct Acc {
    int64_t n = 0;
    double r = 0.0, t = 0.0;
  };
  std::map<int32_t, Acc> acc;
  const int64_t total = nz * ny * nx;
  for (int64_t i = 0; i < total; ++i) {
    if (labels[i] == 0 || !inside(mask, i)) continue;
    Acc& a = acc[labels[i]];
    ++a.n;
    a.r += pred[i];
    a.t += ref[i];
  }
  std::vector<LabelMean> out;
  for (const auto& [label, a] : acc) {
    LabelMean l;
    l.label = label;
    l.voxels = a.n;
    l.pred_mean = a.r / static_cast<double>(a.n);
    l.ref_mean = a.t / static_cast<double>(a.n);
    out.push_back(l);
  }
  return out;
}

}  // namespace dq
