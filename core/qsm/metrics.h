// Image-quality metrics of a reconstructed susceptibility map against a
// reference, following the QSM-CI / QSM challenge definitions so numbers
// compare with published tables (docs/metrics.md gives each formula and its
// source). All statistics are taken inside the mask; volumes are (nz, ny, nx)
// with x fastest, in ppm; voxel_mm is (x, y, z).
//
//   nrmse   100 ||(r - mean r) - (t - mean t)|| / ||t - mean t||      (%)
//   dnrmse  nrmse after the prediction is detrended: r' = (r - b) / a with
//           r ~ a t + b the least-squares line over the mask (= nrmse
//           when a = 0)                                                  (%)
//   hfen    100 ||LoG(r) - LoG(t)|| / ||LoG(t)||, LoG sigma 1.5 voxels,
//           truncated at 5 sigma, of the masked volumes                 (%)
//   xsim    SSIM with a 5^3 uniform window (clipped at the grid edges),
//           C1 = 1e-4, C2 = 1e-6 (ppm^2), no intensity rescaling, mean over
//           the mask (Milovic et al. 2024; QSM-CI's scorer)
//   ssim    the same window with Wang et al.'s C1 = (0.01 L)^2,
//           C2 = (0.03 L)^2, L = max(t) - min(t) over the mask
//   psnr    20 log10(L / RMSE), the same L                              (dB)
//   corr    Pearson correlation of r and t over the mask
//   err_mean, err_std  mean and standard deviation of r - t over the mask (ppm)
// (r = prediction, t = reference.)
#pragma once
#include <array>
#include <cstdint>
#include <vector>

namespace dq {

struct Metrics {
  double nrmse = 0, dnrmse = 0, hfen = 0, xsim = 0, ssim = 0, psnr = 0, corr = 0, err_mean = 0,
         err_std = 0;
};

// pred and ref are (nz, ny, nx); mask is (nz, ny, nx) with non-zero = inside,
// or nullptr for every voxel. Fails if the mask is empty or the reference is
// constant inside it.
Metrics compute_metrics(const float* pred, const float* ref, const uint8_t* mask /*nullable*/,
                        int64_t nz, int64_t ny, int64_t nx, const std::array<double, 3>& voxel_mm);

// Mean of prediction and reference per region of a label image (0 =
// background, ignored), restricted to the mask when one is given. Sorted by
// label; labels without voxels inside the mask are left out.
struct LabelMean {
  int32_t label = 0;
  int64_t voxels = 0;
  double pred_mean = 0, ref_mean = 0;  // ppm
  double diff() const { return pred_mean - ref_mean; }
};
std::vector<LabelMean> label_means(const float* pred, const float* ref, const int32_t* labels,
                                   const uint8_t* mask /*nullable*/, int64_t nz, int64_t ny,
                                   int64_t nx);

}  // namespace dq
