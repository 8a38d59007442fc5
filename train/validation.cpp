#include "train/validation.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"

namespace dq {

namespace {

bool same_grid(const Volume& a, const Volume& b) {
  return a.nx == b.nx && a.ny == b.ny && a.nz == b.nz;
}

// Fails when the metrics could not score the pair: no voxel inside the
// mask, NaN or infinite values there, or a constant reference.
void check_reference(const TrainConfig& cfg, const ReferencePair& r) {
  int64_t inside = 0, bad = 0;
  double lo = INFINITY, hi = -INFINITY;
  for (size_t i = 0; i < r.chi.data.size(); ++i) {
    if (!r.mask.empty() && !r.mask[i]) continue;
    ++inside;
    const float f = r.field.data[i], c = r.chi.data[i];
    bad += !std::isfinite(f) || !std::isfinite(c);
    lo = std::min<double>(lo, c);
    hi = std::max<double>(hi, c);
  }
  if (inside == 0) fail("train.reference_mask ", cfg.reference_mask, ": no voxel is inside");
  if (bad > 0)
    fail("train.reference_field/reference_chi: ", bad,
         " voxels inside the mask are NaN or infinite; the metrics need finite values");
  if (!(hi > lo))
    fail("train.reference_chi ", cfg.reference_chi,
         ": constant inside the mask, so NRMSE and HFEN are undefined");
}

}  // namespace

double mse(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return s / static_cast<double>(n);
}

PatchMetrics patch_metrics(const float* pred, const Tensor& ref, const Recipe& r) {
  const int64_t n = ref.dim(0), P = ref.dim(1), per = ref.numel() / n;
  PatchMetrics pm;
  pm.mse = mse(pred, ref.f32(), ref.numel());
  for (int64_t i = 0; i < n; ++i) {
    const float* t = ref.f32() + i * per;
    const auto [lo, hi] = std::minmax_element(t, t + per);
    if (*lo == *hi) continue;
    const Metrics m = compute_metrics(pred + i * per, t, nullptr, P, P, P, r.voxel_mm);
    pm.nrmse += m.nrmse;
    pm.hfen += m.hfen;
    pm.xsim += m.xsim;
    ++pm.scored;
  }
  if (pm.scored > 0) {
    pm.nrmse /= static_cast<double>(pm.scored);
    pm.hfen /= static_cast<double>(pm.scored);
    pm.xsim /= static_cast<double>(pm.scored);
  }
  return pm;
}

PatchMetrics validate_patches(Backend& be, UNet& net, const Tensor& params, const PatchSet& set,
                              const Recipe& r) {
  const int64_t n = set.field.dim(0), per = set.field.numel() / n;
  const Shape one{1, set.field.dim(1), set.field.dim(2), set.field.dim(3), 1};
  Tensor x = be.alloc(one), y = be.alloc(one), host_y = Tensor::zeros(one);
  std::vector<float> pred(static_cast<size_t>(set.field.numel()));
  for (int64_t i = 0; i < n; ++i) {
    be.upload(set.field.slice(i * per, one), x);
    net.forward(be, params, x, y, false);
    be.download(y, host_y);
    std::copy(host_y.f32(), host_y.f32() + per, pred.data() + i * per);
  }
  return patch_metrics(pred.data(), set.chi, r);
}

ReferencePair load_reference(const TrainConfig& cfg, int64_t multiple) {
  ReferencePair r;
  r.field = read_nifti(cfg.reference_field);
  r.chi = read_nifti(cfg.reference_chi);
  if (!same_grid(r.field, r.chi))
    fail("train.reference_chi ", cfg.reference_chi,
         " has a different grid than train.reference_field");
  if (!cfg.reference_mask.empty()) {
    const Volume m = read_nifti(cfg.reference_mask);
    if (!same_grid(m, r.field))
      fail("train.reference_mask ", cfg.reference_mask,
           " has a different grid than train.reference_field");
    r.mask.resize(m.data.size());
    // > 0.5 is inside, as in every other command.
    for (size_t i = 0; i < m.data.size(); ++i) r.mask[i] = m.data[i] > 0.5f;
  }
  check_reference(cfg, r);
  r.pd = round_up(r.field.nz, multiple);
  r.ph = round_up(r.field.ny, multiple);
  r.pw = round_up(r.field.nx, multiple);
  return r;
}

Metrics validate_reference(Backend& be, std::unique_ptr<UNet>& net, const UNetConfig& model,
                           const Tensor& params, const ReferencePair& r, double* masked_mse) {
  const Shape s{1, r.pd, r.ph, r.pw, 1};
  Tensor host_x = Tensor::zeros(s), host_y = Tensor::zeros(s);
  for (int64_t z = 0; z < r.field.nz; ++z)
    for (int64_t yy = 0; yy < r.field.ny; ++yy)
      std::copy_n(r.field.data.data() + (z * r.field.ny + yy) * r.field.nx, r.field.nx,
                  host_x.f32() + (z * r.ph + yy) * r.pw);
  Tensor x = be.alloc(s), y = be.alloc(s);
  be.upload(host_x, x);
  if (!net) net = std::make_unique<UNet>(model);
  net->forward(be, params, x, y, false);
  be.download(y, host_y);
  std::vector<float> pred(r.chi.data.size());
  for (int64_t z = 0; z < r.field.nz; ++z)
    for (int64_t yy = 0; yy < r.field.ny; ++yy)
      std::copy_n(host_y.f32() + (z * r.ph + yy) * r.pw, r.field.nx,
                  pred.data() + (z * r.field.ny + yy) * r.field.nx);
  double s2 = 0;
  int64_t cnt = 0;
  for (size_t i = 0; i < pred.size(); ++i) {
    if (!r.mask.empty() && !r.mask[i]) continue;
    s2 += (double(pred[i]) - r.chi.data[i]) * (double(pred[i]) - r.chi.data[i]);
    ++cnt;
  }
  *masked_mse = cnt ? s2 / static_cast<double>(cnt) : 0.0;
  return compute_metrics(pred.data(), r.chi.data.data(), r.mask.empty() ? nullptr : r.mask.data(),
                         r.field.nz, r.field.ny, r.field.nx, r.field.voxel_mm);
}

}  // namespace dq
