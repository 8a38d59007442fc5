// Scale pyramid for inference (see core/qsm/ensemble.h).
#include "core/qsm/ensemble.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "core/parallel.h"

namespace dq {

namespace {

size_t at(const Dims3& d, int64_t z, int64_t y, int64_t x) {
  return static_cast<size_t>((z * d.ny + y) * d.nx + x);
}

// Linear interpolation weights along one axis: fine index i -> coarse
// indices lo, lo + 1 (clamped) and the weight of lo + 1.
struct Lerp {
  std::vector<int64_t> lo, hi;
  std::vector<float> w;
};

Lerp lerp_axis(int64_t fine_n, int64_t coarse_n, int64_t factor) {
  Lerp l;
  l.lo.resize(static_cast<size_t>(fine_n));
  l.hi.resize(static_cast<size_t>(fine_n));
  l.w.resize(static_cast<size_t>(fine_n));
  for (int64_t i = 0; i < fine_n; ++i) {
    const double c = (static_cast<double>(i) + 0.5) / static_cast<double>(factor) - 0.5;
    const double f = std::floor(c);
    const auto k = static_cast<int64_t>(f);
    const auto s = static_cast<size_t>(i);
    l.lo[s] = std::clamp<int64_t>(k, 0, coarse_n - 1);
    l.hi[s] = std::clamp<int64_t>(k + 1, 0, coarse_n - 1);
    l.w[s] = static_cast<float>(c - f);
  }
  return l;
}

// Gaussian taps w[-r .. r] (stored at w[0 .. 2r]), summing to 1.
std::vector<double> gauss_taps(double sigma, int64_t& r) {
  r = static_cast<int64_t>(std::ceil(3.0 * sigma));
  std::vector<double> w(static_cast<size_t>(2 * r + 1));
  double sum = 0;
  for (int64_t t = -r; t <= r; ++t) {
    w[static_cast<size_t>(t + r)] = std::exp(-0.5 * static_cast<double>(t * t) / (sigma * sigma));
    sum += w[static_cast<size_t>(t + r)];
  }
  for (double& x : w) x /= sum;
  return w;
}

// Outputs blur_lines sums at once (below).
constexpr int64_t kBlurBlock = 32;

// One axis of the blur on `n` lines of length `len` whose elements are
// `stride` apart and whose starts are given by line_start(j). Each line is
// copied out, so the access pattern of the axis does not matter for
// correctness; taps beyond the line's ends are dropped and the rest
// renormalised.
template <class Start>
void blur_lines(float* v, int64_t n_lines, int64_t len, int64_t stride,
                const std::vector<double>& w, int64_t r, Start line_start) {
  // prefix[t] = w[0] + ... + w[t - 1]: the weight left near an edge.
  std::vector<double> prefix(w.size() + 1, 0.0);
  for (size_t t = 0; t < w.size(); ++t) prefix[t + 1] = prefix[t] + w[t];
  const int64_t taps = 2 * r + 1;
  // Lines are independent: threads take runs of them (core/parallel.h).
  const int64_t grain = std::max<int64_t>(1, kPointwiseGrain / (len * taps));
  parallel_for(n_lines, grain, [&](int64_t j0, int64_t j1) {
    // The line with r zeros either side (and room for a last part-block), so
    // every output sums all taps: a dropped tap adds +0.0, which leaves a sum
    // that started at +0.0 unchanged, so each sum is bit for bit the sum over
    // the taps inside the line alone (a NaN sum may carry another NaN's sign:
    // which operand's NaN an add keeps is the compiler's choice). kBlurBlock
    // outputs are summed together, each in the same order, so they overlap
    // instead of each waiting on its previous add.
    std::vector<double> line(static_cast<size_t>(len + 2 * r + kBlurBlock), 0.0);
    double* lp = line.data();
    for (int64_t j = j0; j < j1; ++j) {
      float* p = v + line_start(j);
      for (int64_t i = 0; i < len; ++i) lp[r + i] = p[i * stride];
      for (int64_t i0 = 0; i0 < len; i0 += kBlurBlock) {
        double acc[kBlurBlock] = {};
        for (int64_t k = 0; k < taps; ++k) {
          const double wk = w[static_cast<size_t>(k)];
          const double* l = lp + i0 + k;  // output i0 + q reads lp[i0 + q + k]
          for (int64_t q = 0; q < kBlurBlock; ++q) acc[q] += wk * l[q];
        }
        for (int64_t i = i0; i < std::min(len, i0 + kBlurBlock); ++i) {
          double s = acc[i - i0];
          const int64_t a = std::max<int64_t>(0, i - r), b = std::min<int64_t>(len - 1, i + r);
          if (b - a < 2 * r)
            s /=
                prefix[static_cast<size_t>(b - i + r + 1)] - prefix[static_cast<size_t>(a - i + r)];
          p[i * stride] = static_cast<float>(s);
        }
      }
    }
  });
}

}  // namespace

Dims3 coarse_dims(const Dims3& fine, int64_t factor) {
  DQ_CHECK(factor >= 1, "coarse_dims: factor must be >= 1");
  return {(fine.nz + factor - 1) / factor, (fine.ny + factor - 1) / factor,
          (fine.nx + factor - 1) / factor};
}

std::vector<float> downsample_mean(const float* in, const Dims3& fine, int64_t factor) {
  const Dims3 c = coarse_dims(fine, factor);
  std::vector<double> acc(static_cast<size_t>(c.numel()), 0.0);
  for (int64_t z = 0; z < fine.nz; ++z)
    for (int64_t y = 0; y < fine.ny; ++y) {
      const float* row = in + at(fine, z, y, 0);
      double* crow = acc.data() + at(c, z / factor, y / factor, 0);
      for (int64_t x = 0; x < fine.nx; ++x) crow[x / factor] += row[x];
    }
  const double inv = 1.0 / static_cast<double>(factor * factor * factor);
  std::vector<float> out(acc.size());
  for (size_t i = 0; i < acc.size(); ++i) out[i] = static_cast<float>(acc[i] * inv);
  return out;
}

std::vector<float> upsample_linear(const float* coarse, const Dims3& cd, int64_t factor,
                                   const Dims3& fine) {
  DQ_CHECK(factor >= 1 && cd.nz >= 1 && cd.ny >= 1 && cd.nx >= 1, "upsample_linear: bad grid");
  const Lerp lz = lerp_axis(fine.nz, cd.nz, factor), ly = lerp_axis(fine.ny, cd.ny, factor),
             lx = lerp_axis(fine.nx, cd.nx, factor);
  std::vector<float> out(static_cast<size_t>(fine.numel()));
  for (int64_t z = 0; z < fine.nz; ++z) {
    const auto sz = static_cast<size_t>(z);
    for (int64_t y = 0; y < fine.ny; ++y) {
      const auto sy = static_cast<size_t>(y);
      // The four coarse rows around (z, y), mixed along z and y first.
      const float* r00 = coarse + at(cd, lz.lo[sz], ly.lo[sy], 0);
      const float* r01 = coarse + at(cd, lz.lo[sz], ly.hi[sy], 0);
      const float* r10 = coarse + at(cd, lz.hi[sz], ly.lo[sy], 0);
      const float* r11 = coarse + at(cd, lz.hi[sz], ly.hi[sy], 0);
      const float wz = lz.w[sz], wy = ly.w[sy];
      float* o = out.data() + at(fine, z, y, 0);
      for (int64_t x = 0; x < fine.nx; ++x) {
        const auto sx = static_cast<size_t>(x);
        const auto mix = [&](int64_t cx) {
          const float a = r00[cx] + wy * (r01[cx] - r00[cx]);
          const float b = r10[cx] + wy * (r11[cx] - r10[cx]);
          return a + wz * (b - a);
        };
        const float lo = mix(lx.lo[sx]), hi = mix(lx.hi[sx]);
        o[x] = lo + lx.w[sx] * (hi - lo);
      }
    }
  }
  return out;
}

void gaussian_blur(float* v, const Dims3& d, double sigma) {
  if (!(sigma > 0)) return;
  int64_t r = 0;
  const std::vector<double> w = gauss_taps(sigma, r);
  const int64_t plane = d.ny * d.nx;
  // x: lines are rows; y: columns of each z plane; z: through the planes.
  blur_lines(v, d.nz * d.ny, d.nx, 1, w, r, [&](int64_t j) { return j * d.nx; });
  blur_lines(v, d.nz * d.nx, d.ny, d.nx, w, r,
             [&](int64_t j) { return (j / d.nx) * plane + j % d.nx; });
  blur_lines(v, plane, d.nz, plane, w, r, [&](int64_t j) { return j; });
}

std::vector<float> blend_scales(const float* fine, const float* coarse_up, const Dims3& d,
                                double sigma) {
  const auto n = static_cast<size_t>(d.numel());
  std::vector<float> diff(n);
  for (size_t i = 0; i < n; ++i) diff[i] = coarse_up[i] - fine[i];
  gaussian_blur(diff.data(), d, sigma);
  for (size_t i = 0; i < n; ++i) diff[i] += fine[i];
  return diff;
}

std::vector<float> predict_multiscale(const std::vector<float>& field, const Dims3& d, int scales,
                                      double sigma, const PredictFn& predict) {
  DQ_CHECK(scales >= 1, "predict_multiscale: scales must be >= 1, got ", scales);
  if (scales == 1) return predict(field, d);
  const std::vector<float> coarse_field = downsample_mean(field.data(), d, 2);
  const Dims3 cd = coarse_dims(d, 2);
  const std::vector<float> coarse =
      predict_multiscale(coarse_field, cd, scales - 1, sigma, predict);
  const std::vector<float> up = upsample_linear(coarse.data(), cd, 2, d);
  const std::vector<float> fine = predict(field, d);
  return blend_scales(fine.data(), up.data(), d, sigma);
}

std::vector<float> flip_volume(const std::vector<float>& in, const Dims3& d, int axes) {
  DQ_CHECK(axes >= 0 && axes < 8, "flip_volume: axes must be 0..7, got ", axes);
  DQ_CHECK(in.size() == static_cast<size_t>(d.numel()), "flip_volume: size mismatch");
  const bool fx = axes & 1, fy = axes & 2, fz = axes & 4;
  std::vector<float> out(in.size());
  for (int64_t z = 0; z < d.nz; ++z)
    for (int64_t y = 0; y < d.ny; ++y) {
      const float* src = in.data() + at(d, fz ? d.nz - 1 - z : z, fy ? d.ny - 1 - y : y, 0);
      float* dst = out.data() + at(d, z, y, 0);
      if (fx)
        std::reverse_copy(src, src + d.nx, dst);
      else
        std::copy(src, src + d.nx, dst);
    }
  return out;
}

std::vector<float> predict_mirrored(const std::vector<float>& field, const Dims3& d, int flips,
                                    const PredictFn& predict) {
  DQ_CHECK(flips == 1 || flips == 2 || flips == 4 || flips == 8,
           "predict_mirrored: flips must be 1, 2, 4 or 8, got ", flips);
  if (flips == 1) return predict(field, d);
  std::vector<double> acc(field.size(), 0.0);
  for (int axes = 0; axes < flips; ++axes) {
    const std::vector<float> out =
        axes == 0 ? predict(field, d)
                  : flip_volume(predict(flip_volume(field, d, axes), d), d, axes);
    for (size_t i = 0; i < acc.size(); ++i) acc[i] += out[i];
  }
  std::vector<float> mean(acc.size());
  for (size_t i = 0; i < acc.size(); ++i) mean[i] = static_cast<float>(acc[i] / flips);
  return mean;
}

}  // namespace dq
