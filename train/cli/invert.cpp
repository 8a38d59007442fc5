// `deepqsm invert tkd|tikhonov|tv`: the classical dipole inversions
// (core/qsm/tkd.h, core/qsm/inversion.h; GPU twins in cuda/qsm/inversion.h) from a
// local field map in ppm to chi in ppm, NIfTI in and out (the output keeps
// the field's header).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/cli_checks.h"
#include "core/error.h"
#include "core/io/nifti_io.h"
#include "core/qsm/inversion.h"
#include "core/qsm/lcurve.h"
#include "core/qsm/tkd.h"
#include "core/qsm/volume_ops.h"
#include "cuda/device.h"
#include "cuda/qsm/inversion.h"
#include "train/cli/commands.h"

namespace dq {

namespace {

struct InvertArgs {
  std::string method, field, out, mask, reg = "identity", device = "cpu";
  std::vector<double> b0_dir{0.0, 0.0, 1.0};
  double threshold = kTkdThreshold;
  double lambda = -1.0;  // not given: the method's default
  bool lcurve = false;   // --lambda lcurve: chosen by the L-curve (core/qsm/lcurve.h)
  std::string lambda_arg;
  double rho = -1.0;  // not given: kTvRhoOverLambda * lambda
  int iterations = kTvIterations;
  double tolerance = kTvTolerance;
  double k0 = 1.0 / 3.0;
  int64_t pad = 0;
};

int run_invert(const InvertArgs& a) {
  check_nifti_output(a.out, "-o", {a.field, a.mask});
  const Volume f = read_nifti(a.field);
  if (const std::string odd = field_grid_warning(f, a.field); !odd.empty())
    std::cerr << "deepqsm: warning: " << odd << "\n";
  const Dims3 dims = f.dims();
  std::vector<uint8_t> mask;
  if (!a.mask.empty()) {
    const Volume m = read_nifti(a.mask);
    if (m.nx != f.nx || m.ny != f.ny || m.nz != f.nz)
      fail("the mask ", a.mask, " is ", m.nx, "x", m.ny, "x", m.nz, " but the field is ", f.nx, "x",
           f.ny, "x", f.nz);
    const std::string other = voxel_size_mismatch(f, "the field", m, "the mask " + a.mask);
    if (!other.empty()) std::cerr << "deepqsm: warning: " << other << "\n";
    mask.resize(m.data.size());
    int64_t inside = 0;
    for (size_t i = 0; i < mask.size(); ++i) inside += mask[i] = m.data[i] > 0.5f;
    if (inside == 0)
      fail(a.mask, ": the mask is empty (no voxel > 0.5); check that it is the right file");
  }
  // The field outside the mask carries no information (usually 0 after
  // background removal); zero it so every method sees the same input. NaN
  // voxels leave the mask and infinite ones are refused, as in deepqsm-infer.
  std::vector<float> field = f.data;
  {
    std::vector<uint8_t> m = mask.empty() ? std::vector<uint8_t>(field.size(), 1) : mask;
    const MaskedField masked = mask_field(field, m, a.field);
    if (masked.nan > 0)
      std::cerr << "deepqsm: warning: " << masked.nan << " NaN voxels in " << a.field
                << " are treated as outside the mask (output 0 there)\n";
    if (masked.nan > 0 || !mask.empty()) mask = std::move(m);  // NaN holes make a mask
  }
  const uint8_t* mp = mask.empty() ? nullptr : mask.data();
  const bool gpu = a.device == "gpu";
  if (gpu && cuda_device_count() == 0) fail("--device gpu: ", cuda_no_device_reason());
  const Vec3 b0{a.b0_dir[0], a.b0_dir[1], a.b0_dir[2]};
  std::vector<float> chi(field.size());

  const auto t0 = std::chrono::steady_clock::now();
  char what[256];
  if (a.method == "tkd") {
    if (gpu)
      cuda_tkd(field.data(), dims, f.voxel_mm, b0, a.threshold, a.k0, a.pad, chi.data());
    else
      tkd(field.data(), dims, f.voxel_mm, b0, a.threshold, a.k0, a.pad, chi.data());
    if (mp)
      for (size_t i = 0; i < chi.size(); ++i)
        if (!mp[i]) chi[i] = 0.0f;
    std::snprintf(what, sizeof what, "TKD, threshold %g", a.threshold);
  } else if (a.lcurve) {
    if (gpu) fail("--lambda lcurve runs on the CPU only (drop --device gpu)");
    const bool tik = a.method == "tikhonov";
    LCurveResult lc;
    if (tik) {
      lc = tikhonov_lcurve(field.data(), mp, dims, f.voxel_mm, b0, tikhonov_reg_from_name(a.reg),
                           a.k0, a.pad, tikhonov_lcurve_lambdas());
    } else {
      TvOptions o;
      o.iterations = a.iterations;
      o.tolerance = a.tolerance;
      lc = tv_lcurve(field.data(), mp, dims, f.voxel_mm, b0, o, kTvRhoOverLambda, a.k0, a.pad,
                     tv_lcurve_lambdas());
    }
    chi = std::move(lc.chi);
    std::vector<double> kappa;
    lcurve_corner(lc.points, &kappa);
    for (size_t i = 0; i < lc.points.size(); ++i)
      std::printf(
          "L-curve: lambda %-10.3g residual %-10.4g regulariser %-10.4g curvature %+.3f%s\n",
          lc.points[i].lambda, lc.points[i].residual, lc.points[i].regulariser, kappa[i],
          i == lc.corner ? "  <- corner" : "");
    std::snprintf(what, sizeof what, "%s, lambda %g (L-curve corner of %zu)",
                  tik ? "Tikhonov" : "TV-ADMM", lc.points[lc.corner].lambda, lc.points.size());
  } else if (a.method == "tikhonov") {
    const double lambda = a.lambda < 0 ? kTikhonovLambda : a.lambda;
    const TikhonovReg reg = tikhonov_reg_from_name(a.reg);
    if (gpu)
      cuda_tikhonov(field.data(), mp, dims, f.voxel_mm, b0, lambda, reg, a.k0, a.pad, chi.data());
    else
      tikhonov(field.data(), mp, dims, f.voxel_mm, b0, lambda, reg, a.k0, a.pad, chi.data());
    std::snprintf(what, sizeof what, "Tikhonov (%s), lambda %g", a.reg.c_str(), lambda);
  } else if (a.method == "tv") {
    TvOptions o;
    o.lambda = a.lambda < 0 ? kTvLambda : a.lambda;
    o.rho = a.rho < 0 ? kTvRhoOverLambda * o.lambda : a.rho;
    o.iterations = a.iterations;
    o.tolerance = a.tolerance;
    const int its =
        gpu ? cuda_tv_admm(field.data(), mp, dims, f.voxel_mm, b0, o, a.k0, a.pad, chi.data())
            : tv_admm(field.data(), mp, dims, f.voxel_mm, b0, o, a.k0, a.pad, chi.data());
    std::snprintf(what, sizeof what, "TV-ADMM, lambda %g, rho %g, %d iterations", o.lambda, o.rho,
                  its);
  } else {
    fail("unknown inversion method '", a.method, "' (expected tkd, tikhonov or tv)");
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  require_finite_result(chi, "chi");  // e.g. TV with a lambda or rho that overflows float
  write_nifti(a.out, f, chi.data());
  std::printf("%s: %s on the %s in %.2f s (%lldx%lldx%lld, B0 %g %g %g, pad %lld)\n", a.out.c_str(),
              what, gpu ? "GPU" : "CPU", secs, static_cast<long long>(f.nx),
              static_cast<long long>(f.ny), static_cast<long long>(f.nz), b0[0], b0[1], b0[2],
              static_cast<long long>(a.pad));
  return 0;
}

}  // namespace

Command add_invert_command(CLI::App& app) {
  auto a = std::make_shared<InvertArgs>();
  CLI::App* cmd = app.add_subcommand(
      "invert",
      "Classical dipole inversion of a local field map (ppm) to chi (ppm): tkd, tikhonov or tv.");
  cmd->footer(
      "Defaults are the literature's: TKD threshold 0.19 (Wharton et al. 2010); Tikhonov\n"
      "lambda 1e-2 (QSM.jl's default); TV lambda 1e-3, rho 100 lambda, 250 iterations, tolerance\n"
      "1e-3 (QSM.jl). Tikhonov: chi^ = D f^ / (D^2 + lambda), or D^2 + lambda |G|^2 with --reg\n"
      "gradient; TV: anisotropic total variation by ADMM (Bilgic et al. 2014). See\n"
      "core/qsm/inversion.h.\n"
      "--lambda lcurve picks lambda per case by the L-curve's maximum curvature.\n"
      "Example: deepqsm invert tv field.nii.gz -o chi_tv.nii.gz --mask mask.nii.gz");
  cmd->add_option("method", a->method, "tkd, tikhonov or tv")
      ->required()
      ->check(CLI::IsMember({"tkd", "tikhonov", "tv"}));
  cmd->add_option("field", a->field, "Local field map (NIfTI), ppm")->required();
  cmd->add_option("-o,--output", a->out, "chi map to write (.nii or .nii.gz), ppm")->required();
  cmd->add_option("--mask", a->mask,
                  "Mask (voxels > 0.5 inside): the field and chi are zeroed outside");
  cmd->add_option("--b0-direction", a->b0_dir, "B0 direction x y z in voxel axes")
      ->expected(3)
      ->capture_default_str();
  cmd->add_option("--threshold", a->threshold, "TKD: truncation of |D|")->capture_default_str();
  cmd->add_option("--lambda", a->lambda_arg,
                  "Tikhonov / TV regularisation weight, > 0 (default 1e-2 / 1e-3), or 'lcurve': "
                  "the corner (maximum curvature) of the L-curve over 1e-4..1 (Tikhonov, 13 "
                  "points) or 1e-5..1e-2 (TV, 7 points); core/qsm/lcurve.h")
      ->check([](const std::string& s) -> std::string {
        if (s == "lcurve") return "";
        try {
          size_t used = 0;
          const double v = std::stod(s, &used);
          if (used == s.size() && v > 0 && std::isfinite(v)) return "";
        } catch (const std::exception&) {
        }
        return "--lambda: expected a number > 0 or 'lcurve', got '" + s + "'";
      });
  cmd->add_option("--reg", a->reg, "Tikhonov regulariser: identity or gradient")
      ->check(CLI::IsMember({"identity", "gradient"}))
      ->capture_default_str();
  cmd->add_option("--rho", a->rho, "TV: ADMM penalty, > 0 (default 100 lambda)")
      ->check(cli::positive());
  cmd->add_option("--iterations", a->iterations, "TV: most ADMM iterations")
      ->transform(cli::int_range(1, 1000000))
      ->capture_default_str();
  cmd->add_option("--tolerance", a->tolerance,
                  "TV: stop when the relative chi change is below this")
      ->check(cli::non_negative())
      ->capture_default_str();
  cmd->add_option("--k0", a->k0, "D(k = 0): 1/3 (DeepQSM lineage) or 0")->capture_default_str();
  cmd->add_option("--pad", a->pad, "Zero voxels per side before the FFTs")
      ->transform(cli::int_range(0, 512))
      ->capture_default_str();
  cmd->add_option("--device", a->device, "cpu or gpu")
      ->check(CLI::IsMember({"cpu", "gpu"}))
      ->capture_default_str();
  return {cmd, [a]() {
            if (a->lambda_arg == "lcurve") {
              if (a->method == "tkd")
                fail("--lambda lcurve: TKD has no lambda (use tikhonov or tv)");
              if (a->rho > 0) fail("--lambda lcurve: rho follows lambda (100 lambda); drop --rho");
              a->lcurve = true;
            } else if (!a->lambda_arg.empty()) {
              a->lambda = std::stod(a->lambda_arg);
            }
            return run_invert(*a);
          }};
}

}  // namespace dq
