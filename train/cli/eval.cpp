// `deepqsm eval`: image metrics of a chi map against a reference
// (core/qsm/metrics.h, definitions in docs/metrics.md), as a table or one JSON
// object, with optional per-label means from a label image.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/io/nifti_io.h"
#include "core/io/output_files.h"
#include "core/io/png_io.h"
#include "core/qsm/metrics.h"
#include "core/qsm/volume_ops.h"
#include "train/cli/commands.h"

namespace dq {

namespace {

constexpr double kMaxHistRange = 10.0;  // ppm; tissue and its errors lie well inside

struct EvalArgs {
  std::string pred, ref, mask, labels, diff_png, hist_png;
  double hist_range = 0.1;  // ppm, half-width of the histogram's axis
  bool json = false;
};

// Histogram of pred - ref inside the mask over [-range, range] ppm, as a
// 400x200 PNG: one grey bar per 2-pixel bin, heights relative to the
// fullest bin, a red line at 0 and blue ticks every 0.05 ppm. Errors beyond
// the range are counted in the end bins. run_eval has checked that range
// lies in (0, kMaxHistRange].
void write_error_histogram(const std::string& path, const std::vector<float>& pred,
                           const std::vector<float>& ref, const uint8_t* mask, double range) {
  constexpr int kW = 400, kH = 200, kBins = kW / 2;
  std::vector<int64_t> count(kBins, 0);
  for (size_t i = 0; i < pred.size(); ++i) {
    if (mask && !mask[i]) continue;
    const double e = static_cast<double>(pred[i]) - ref[i];
    int b = static_cast<int>(std::floor((e + range) / (2.0 * range) * kBins));
    count[static_cast<size_t>(std::clamp(b, 0, kBins - 1))]++;
  }
  const int64_t peak = std::max<int64_t>(1, *std::max_element(count.begin(), count.end()));
  std::vector<uint8_t> rgb(static_cast<size_t>(kW * kH * 3), 255);
  auto put = [&](int x, int y, uint8_t r, uint8_t g, uint8_t b) {
    uint8_t* p = &rgb[static_cast<size_t>((y * kW + x) * 3)];
    p[0] = r;
    p[1] = g;
    p[2] = b;
  };
  for (int b = 0; b < kBins; ++b) {
    const int h = static_cast<int>(std::lround(static_cast<double>(count[static_cast<size_t>(b)]) /
                                               static_cast<double>(peak) * (kH - 10)));
    for (int y = kH - h; y < kH; ++y) put(2 * b, y, 90, 90, 90), put(2 * b + 1, y, 90, 90, 90);
  }
  for (double t = -std::floor(range / 0.05) * 0.05; t <= range + 1e-12; t += 0.05) {
    const int x =
        std::clamp(static_cast<int>(std::lround((t + range) / (2.0 * range) * kW)), 0, kW - 1);
    for (int y = kH - 8; y < kH; ++y) put(x, y, 40, 80, 220);
  }
  for (int y = 0; y < kH; ++y) put(kW / 2, y, 220, 30, 30);
  write_png_rgb(path, kW, kH, rgb.data());
}

// Central slices of prediction, reference and their difference (zero
// outside the mask); chi rows share the reference's robust window, the
// difference row a window a third as wide, so small errors stay visible.
void write_difference_png(const std::string& path, const Volume& pred, const Volume& ref,
                          const uint8_t* mask) {
  std::vector<float> p = pred.data, r = ref.data, d(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    if (mask && !mask[i]) p[i] = r[i] = 0.0f;
    d[i] = p[i] - r[i];
  }
  const auto w = robust_window(r.data(), static_cast<int64_t>(r.size()));
  const Dims3 dims = pred.dims();
  write_slices_png(path,
                   {{"prediction (ppm)", p.data(), dims, w.first, w.second},
                    {"reference (ppm)", r.data(), dims, w.first, w.second},
                    {"prediction - reference (ppm)", d.data(), dims, w.first / 3, w.second / 3}});
}

void require_same_grid(const Volume& a, const Volume& b, const std::string& what) {
  if (a.nx != b.nx || a.ny != b.ny || a.nz != b.nz)
    fail(what, " is ", b.nx, "x", b.ny, "x", b.nz, " but the prediction is ", a.nx, "x", a.ny, "x",
         a.nz);
  const std::string other = voxel_size_mismatch(a, "the prediction", b, what);
  if (!other.empty()) std::cerr << "deepqsm: warning: " << other << "\n";
}

// JSON has no NaN or infinity (pSNR of a perfect match; HFEN, SSIM or XSIM
// with nothing to average): those become null.
nlohmann::ordered_json number(double v) {
  return std::isfinite(v) ? nlohmann::ordered_json(v) : nlohmann::ordered_json(nullptr);
}

// NaN or infinite voxels inside the mask (nullable) would turn every metric
// into NaN, or read as a constant reference.
void require_finite(const Volume& v, const uint8_t* mask, const std::string& what) {
  const int64_t bad = count_non_finite(v.data.data(), v.data.size(), mask);
  if (bad > 0)
    fail(what, ": ", bad, " voxel", bad == 1 ? " is" : "s are", " NaN or infinite",
         mask ? " inside the mask" : "", "; the metrics need finite values");
}

int run_eval(const EvalArgs& a) {
  if (!a.diff_png.empty())
    check_output_file(a.diff_png, "--diff-png", {a.pred, a.ref, a.mask, a.labels, a.hist_png});
  if (!a.hist_png.empty())
    check_output_file(a.hist_png, "--hist-png", {a.pred, a.ref, a.mask, a.labels});
  // Checked before any work; write_error_histogram draws ticks every
  // 0.05 ppm, and a range of 1e12 drew them for hours.
  if (!a.hist_png.empty() && !(a.hist_range > 0.0 && a.hist_range <= kMaxHistRange))
    fail("--hist-range must be in (0, ", kMaxHistRange, "] ppm, got ", a.hist_range);
  const Volume pred = read_nifti(a.pred);
  const Volume ref = read_nifti(a.ref);
  require_same_grid(pred, ref, "the reference " + a.ref);
  const int64_t n = pred.numel();

  std::vector<uint8_t> mask;
  if (!a.mask.empty()) {
    const Volume m = read_nifti(a.mask);
    require_same_grid(pred, m, "the mask " + a.mask);
    mask.resize(static_cast<size_t>(n));
    // Voxels above 0.5 are inside, as in deepqsm-infer (masks may be stored as floats).
    for (int64_t i = 0; i < n; ++i)
      mask[static_cast<size_t>(i)] = m.data[static_cast<size_t>(i)] > 0.5f;
  }
  const uint8_t* mp = mask.empty() ? nullptr : mask.data();
  require_finite(pred, mp, a.pred);
  require_finite(ref, mp, "the reference " + a.ref);
  const Metrics m = compute_metrics(pred.data.data(), ref.data.data(), mp, pred.nz, pred.ny,
                                    pred.nx, ref.voxel_mm);

  std::vector<LabelMean> lm;
  if (!a.labels.empty()) {
    const Volume l = read_nifti(a.labels);
    require_same_grid(pred, l, "the label image " + a.labels);
    std::vector<int32_t> labels(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) {
      // Whole numbers in int32's range only (rounding merged 1.4 with 1, and
      // NaN or 2^32 vanished into label 0); voxels outside the mask are not
      // counted, so they may hold anything.
      const float v = l.data[static_cast<size_t>(i)];
      if (mp && !mp[i]) continue;
      if (!(v >= -2147483648.0f && v < 2147483648.0f) || v != std::floor(v))
        fail(a.labels, ": voxel ", i, " holds ", v,
             "; labels must be whole numbers (0 = none) within 32-bit integers");
      labels[static_cast<size_t>(i)] = static_cast<int32_t>(v);
    }
    lm = label_means(pred.data.data(), ref.data.data(), labels.data(), mp, pred.nz, pred.ny,
                     pred.nx);
  }
  // Pictures last: a failed check above must not leave (or overwrite) them.
  OutputGroup pngs;  // both or neither
  if (!a.diff_png.empty()) write_difference_png(a.diff_png, pred, ref, mp);
  if (!a.hist_png.empty()) write_error_histogram(a.hist_png, pred.data, ref.data, mp, a.hist_range);
  pngs.commit();

  if (a.json) {
    nlohmann::ordered_json j;
    j["NRMSE"] = number(m.nrmse);
    j["dNRMSE"] = number(m.dnrmse);
    j["HFEN"] = number(m.hfen);
    j["XSIM"] = number(m.xsim);
    j["SSIM"] = number(m.ssim);
    j["PSNR"] = number(m.psnr);
    j["CORR"] = number(m.corr);
    j["ERR_MEAN"] = number(m.err_mean);
    j["ERR_STD"] = number(m.err_std);
    if (!a.labels.empty()) {
      nlohmann::ordered_json labels = nlohmann::ordered_json::object();
      for (const LabelMean& l : lm)
        labels[std::to_string(l.label)] = {{"voxels", l.voxels},
                                           {"pred_mean", number(l.pred_mean)},
                                           {"ref_mean", number(l.ref_mean)},
                                           {"diff", number(l.diff())}};
      j["labels"] = labels;
    }
    std::cout << j.dump() << "\n";
    return 0;
  }

  std::printf("prediction %s\nreference  %s\n", a.pred.c_str(), a.ref.c_str());
  std::printf("mask       %s\n", a.mask.empty() ? "(none: every voxel)" : a.mask.c_str());
  std::printf("  NRMSE    %10.3f %%    (demeaned, inside the mask)\n", m.nrmse);
  std::printf("  dNRMSE   %10.3f %%    (after the linear detrend)\n", m.dnrmse);
  std::printf("  HFEN     %10.3f %%    (LoG sigma 1.5 voxels)\n", m.hfen);
  std::printf("  XSIM     %10.4f\n", m.xsim);
  std::printf("  SSIM     %10.4f\n", m.ssim);
  std::printf("  PSNR     %10.3f dB   (peak = reference range in the mask)\n", m.psnr);
  std::printf("  CORR     %10.4f\n", m.corr);
  std::printf("  ERR_MEAN %10.5f ppm\n", m.err_mean);
  std::printf("  ERR_STD  %10.5f ppm\n", m.err_std);
  if (!a.labels.empty()) {
    std::printf("\n  label    voxels   pred mean    ref mean        diff  (ppm)\n");
    for (const LabelMean& l : lm)
      std::printf("  %5d %9lld %11.5f %11.5f %11.5f\n", l.label, static_cast<long long>(l.voxels),
                  l.pred_mean, l.ref_mean, l.diff());
  }
  return 0;
}

}  // namespace

Command add_eval_command(CLI::App& app) {
  auto a = std::make_shared<EvalArgs>();
  CLI::App* cmd = app.add_subcommand(
      "eval", "Compare a chi map with a reference: NRMSE, dNRMSE, HFEN, XSIM, SSIM, pSNR, ...");
  cmd->footer(
      "All statistics are taken inside the mask (every voxel without one); the\n"
      "definitions follow QSM-CI and the 2016 QSM challenge, see docs/metrics.md.\n"
      "Example: deepqsm eval chi.nii.gz --ref chi_cosmos.nii.gz --mask msk.nii.gz --json");
  cmd->add_option("prediction", a->pred, "chi map to score (NIfTI), ppm")->required();
  cmd->add_option("--ref", a->ref, "Reference chi map on the same grid (NIfTI), ppm")->required();
  cmd->add_option("--mask", a->mask, "Mask on the same grid (voxels > 0.5 are inside)");
  cmd->add_option("--labels", a->labels,
                  "Label image on the same grid (integer labels, 0 = none) for per-region means");
  cmd->add_flag("--json", a->json, "Print one JSON object instead of a table");
  cmd->add_option("--diff-png", a->diff_png,
                  "Also draw central slices of prediction, reference and difference to this PNG");
  cmd->add_option("--hist-png", a->hist_png,
                  "Also draw the histogram of the difference inside the mask to this PNG "
                  "(red line: 0; blue ticks: every 0.05 ppm)");
  cmd->add_option("--hist-range", a->hist_range, "Histogram axis: [-range, range] ppm")
      ->capture_default_str();
  return {cmd, [a]() { return run_eval(*a); }};
}

}  // namespace dq
