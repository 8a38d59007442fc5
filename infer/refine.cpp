// deepqsm-infer's refinement stage: the network's chi pulled towards data
// consistency (core/qsm/refine.h; ADMM with TV, or CG on the GPU or CPU).
#include "core/qsm/refine.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "cuda/qsm/inversion.h"
#include "infer/stages.h"

namespace dq {

namespace {

// D(0) of the fields the model was trained on: data.dipole_k0 of the
// training config its checkpoint stores. The refinement's forward model must
// use the same, or it pulls the mean of chi away from what the network learnt.
// 1/3 (every config's default) when the file holds no readable value.
double trained_dipole_k0(const std::string& config_json) {
  const nlohmann::json cfg = nlohmann::json::parse(config_json, nullptr, false);
  if (cfg.is_object() && cfg.contains("data") && cfg["data"].is_object()) {
    const auto& data = cfg["data"];
    const auto it = data.find("dipole_k0");
    if (it != data.end() && it->is_number() && std::isfinite(it->get<double>()))
      return it->get<double>();
  }
  return RefineOptions{}.k0_value;
}

// The refinement's options from the command line's, lambda resolved (auto:
// the TV default, or from the field's noise for CG).
RefineOptions refine_options(const InferInputs& in, const InferOptions& opt) {
  RefineOptions ro;
  ro.iterations = opt.refine;
  ro.lambda = opt.refine_lambda;
  ro.tv = opt.refine_tv;
  if (ro.lambda == 0 && ro.tv > 0) {
    ro.lambda = kRefineTvLambda;
  } else if (ro.lambda == 0) {
    const double noise = estimate_noise_std(in.field.data.data(), in.mask.data(), in.field.dims());
    ro.lambda = refine_lambda_for_noise(noise);
    std::printf("noise:  %.3g ppm (white-noise sd from the field's Laplacian) -> lambda %.3g\n",
                noise, ro.lambda);
  }
  ro.pad = opt.refine_pad;
  ro.k0_value = trained_dipole_k0(in.model.config_json);
  if (ro.k0_value != RefineOptions{}.k0_value)
    std::printf("refine: D(0) = %g, as in the model's training data\n", ro.k0_value);
  return ro;
}

}  // namespace

void check_refine_fits(const InferInputs& in, const InferOptions& opt) {
  if (opt.refine <= 0) return;
  const Dims3 padded = in.field.dims().padded(opt.refine_pad);
  const double need = static_cast<double>(padded.numel()) * kRefineBytesPerPaddedVoxel;
  const double avail = available_memory_bytes();
  if (need > avail)
    fail("--refine on ", dims_str(padded), " voxels (the field padded by --refine-pad ",
         opt.refine_pad, " per side) needs ~", need / 1073741824.0, " GiB of host memory, ",
         avail / 1073741824.0, " GiB are available: lower --refine-pad, or --refine 0");
}

double refine(std::vector<float>& chi, const InferInputs& in, const InferOptions& opt, bool gpu) {
  if (opt.refine <= 0) return 0.0;
  const auto t0 = std::chrono::steady_clock::now();
  const Dims3 dims = in.field.dims();
  // Data consistency after the network (core/qsm/refine.h): ADMM on J_TV, or
  // CG on |D*chi - f|^2 + lambda |chi - chi_net|^2 inside the mask.
  const RefineOptions ro = refine_options(in, opt);
  char how[64] = "conjugate-gradient iterations,";
  if (ro.tv > 0) std::snprintf(how, sizeof how, "ADMM iterations with TV alpha %g,", ro.tv);
  std::printf("refine: %d %s lambda %g, FFTs on %s (%lld zero voxels added per side)%s\n",
              opt.refine, how, ro.lambda, dims_str(dims.padded(ro.pad)).c_str(),
              static_cast<long long>(ro.pad),
              gpu && ro.tv > 0 ? ", on the CPU (no GPU version of the TV refinement yet)" : "");
  std::vector<float> refined(chi.size());
  std::vector<double> objective;
  if (gpu && ro.tv == 0)
    cuda_refine_chi(in.field.data.data(), chi.data(), in.mask.data(), dims, in.field.voxel_mm,
                    opt.b0_dir, ro, refined.data(), &objective);
  else
    refine_chi(in.field.data.data(), chi.data(), in.mask.data(), dims, in.field.voxel_mm,
               opt.b0_dir, ro, refined.data(), &objective);
  // refine_chi stops at a diverging iteration itself; the GPU's CG is
  // judged here on the trace it returns.
  if (const int at = refine_diverged_at(objective)) fail_refine_diverged(objective, at, ro);
  chi = std::move(refined);
  apply_mask(chi.data(), in.mask.data(), in.field.numel());
  std::printf("refine: objective %.4g -> %.4g\n", objective.empty() ? 0.0 : objective.front(),
              objective.empty() ? 0.0 : objective.back());
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace dq
