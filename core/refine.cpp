#include "core/refine.h"

#include <algorithm>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"

namespace dq {

namespace {

// The CG vectors' loops, threaded; the sums in fixed blocks (core/parallel.h).
double dot(const std::vector<float>& a, const std::vector<float>& b) {
  return parallel_sum(static_cast<int64_t>(a.size()), [&](int64_t i0, int64_t i1) {
    double s = 0.0;
    for (int64_t i = i0; i < i1; ++i) s += static_cast<double>(a[i]) * b[i];
    return s;
  });
}
template <class F>
void for_each_voxel(int64_t n, const F& f) {
  parallel_for(n, kPointwiseGrain, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) f(i);
  });
}

// The padded dipole convolution and its masked normal operator, sharing one filter.
struct DipoleOp {
  Dims3 dims;
  PaddedFilter filter;
  const uint8_t* mask;

  DipoleOp(const Dims3& d, const Vec3& voxel_mm, const Vec3& b0_dir, double k0, int64_t p,
           const uint8_t* m)
      : dims(d),
        filter(d, p, dipole_kernel(d.padded(p), voxel_mm, b0_dir, k0), /*threaded=*/true),
        mask(m) {}

  void apply(const float* in, float* out) { filter.apply(in, out); }
  void masked(float* v) const {
    if (!mask) return;
    for_each_voxel(dims.numel(), [&](int64_t i) {
      if (mask[i] == 0) v[i] = 0.0f;
    });
  }
  // out = D^H M D in + lambda in
  void normal(const float* in, double lambda, float* tmp, float* out) {
    apply(in, tmp);
    masked(tmp);
    apply(tmp, out);
    const float l = static_cast<float>(lambda);
    for_each_voxel(dims.numel(), [&](int64_t i) { out[i] += l * in[i]; });
  }
  // J(chi) given dchi = D chi (only its voxels inside the mask are read).
  template <class T>
  double objective_given(const T* dchi, const float* chi, const float* field, const float* chi_net,
                         double lambda) const {
    return parallel_sum(dims.numel(), [&](int64_t i0, int64_t i1) {
      double data = 0.0, prior = 0.0;
      for (int64_t i = i0; i < i1; ++i) {
        if (!mask || mask[i] != 0) {
          const double r = static_cast<double>(dchi[i]) - field[i];
          data += r * r;
        }
        const double p = static_cast<double>(chi[i]) - chi_net[i];
        prior += p * p;
      }
      return data + lambda * prior;
    });
  }
  double objective(const float* chi, const float* field, const float* chi_net, double lambda,
                   float* tmp) {
    apply(chi, tmp);
    return objective_given(tmp, chi, field, chi_net, lambda);
  }
};

void check(const RefineOptions& opt) {
  if (opt.iterations < 0) fail("refinement iterations must be >= 0, got ", opt.iterations);
  if (!(opt.lambda > 0.0)) fail("refinement lambda must be positive, got ", opt.lambda);
  if (opt.pad < 0) fail("refinement padding must be >= 0, got ", opt.pad);
}

}  // namespace

double refine_lambda_for_noise(double noise_std_ppm) {
  const double r = noise_std_ppm / kRefineNetErrorPpm;
  return std::max(kRefineLambda, r * r);
}

double refine_objective(const float* chi, const float* field, const float* chi_net,
                        const uint8_t* mask, const Dims3& dims, const Vec3& voxel_mm,
                        const Vec3& b0_dir, const RefineOptions& opt) {
  check(opt);
  DipoleOp op(dims, voxel_mm, b0_dir, opt.k0_value, opt.pad, mask);
  std::vector<float> tmp(static_cast<size_t>(dims.numel()));
  return op.objective(chi, field, chi_net, opt.lambda, tmp.data());
}

void refine_chi(const float* field, const float* chi_net, const uint8_t* mask, const Dims3& dims,
                const Vec3& voxel_mm, const Vec3& b0_dir, const RefineOptions& opt, float* chi,
                std::vector<double>* objective) {
  check(opt);
  const size_t n = static_cast<size_t>(dims.numel());
  DipoleOp op(dims, voxel_mm, b0_dir, opt.k0_value, opt.pad, mask);
  std::vector<float> net(chi_net, chi_net + n);  // chi may alias chi_net
  std::vector<float> x = net, r(n), p(n), ap(n), tmp(n);

  // r = b - A x0 = D M (f - D chi_net), since the prior term vanishes at x0 = chi_net.
  op.apply(x.data(), tmp.data());
  // dx = D x inside the mask, for the objective: kept up to date from the
  // M D p that each CG step computes anyway (dx += alpha M D p), so tracing J
  // costs no FFT (it cost a third padded FFT pair per iteration before).
  // Voxels outside the mask keep D chi_net there; the objective never reads them.
  std::vector<double> dx;
  if (objective) dx.assign(tmp.begin(), tmp.end());
  const auto nv = static_cast<int64_t>(n);
  for_each_voxel(nv, [&](int64_t i) { tmp[i] = field[i] - tmp[i]; });
  op.masked(tmp.data());
  op.apply(tmp.data(), r.data());
  p = r;
  double rr = dot(r, r);
  if (objective) {
    objective->clear();
    objective->push_back(op.objective_given(dx.data(), x.data(), field, net.data(), opt.lambda));
  }
  for (int it = 0; it < opt.iterations && rr > 0.0; ++it) {
    op.normal(p.data(), opt.lambda, tmp.data(), ap.data());  // tmp = M D p
    const double pap = dot(p, ap);
    if (!(pap > 0.0)) break;  // A is positive definite; this only guards round-off at convergence
    const float alpha = static_cast<float>(rr / pap);
    for_each_voxel(nv, [&](int64_t i) {
      x[i] += alpha * p[i];
      r[i] -= alpha * ap[i];
    });
    const double rr_new = dot(r, r);
    const float beta = static_cast<float>(rr_new / rr);
    rr = rr_new;
    for_each_voxel(nv, [&](int64_t i) { p[i] = r[i] + beta * p[i]; });
    if (objective) {
      for_each_voxel(nv, [&](int64_t i) { dx[i] += static_cast<double>(alpha) * tmp[i]; });
      objective->push_back(op.objective_given(dx.data(), x.data(), field, net.data(), opt.lambda));
    }
  }
  std::copy(x.begin(), x.end(), chi);
}

}  // namespace dq
