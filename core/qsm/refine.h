// Data-consistency refinement of a network prediction: a few conjugate-
// gradient (CG) iterations on
//
//   J(chi) = || M (D chi - f) ||^2 + lambda || chi - chi_net ||^2
//
// i.e. on the normal equations (D^H M D + lambda I) chi = D^H M f + lambda chi_net,
// starting from chi_net. M is the mask (1 inside, 0 outside; all ones when no
// mask is given), so field voxels outside the brain, which carry no data,
// do not pull on chi. D is the padded dipole convolution of core/qsm/dipole.h
// (zero-pad, FFT, multiply by D(k), inverse FFT, crop), which is self-
// adjoint, so D^H = D. chi stays close to chi_net for large lambda and moves
// towards the data for small lambda; with few iterations CG also acts as a
// regulariser. J decreases at every CG step. With M = I, pad = 0 and
// chi_net = 0 the fixed point is the identity-Tikhonov solution with the
// same lambda (core/qsm/inversion.h), which the tests check.
//
// RefineOptions' defaults: lambda 1e-2 (the Tikhonov default, so the
// refinement trusts the network where the dipole kernel is near zero), 10
// iterations, no padding. deepqsm-infer ran it by default until 2026-12-02
// (now with `--refine-tv 0`) with its own settings: `--refine 20`,
// `--refine-pad 32` (the choice of scripts/select-inference.sh on synthetic
// data), lambda matched to the field's noise (refine_lambda_for_noise below)
// and D(0) from the model's training config. cuda/qsm/inversion.h has the GPU
// version, cuda_refine_chi, with the same numbers.
//
// With RefineOptions::tv = alpha > 0 the refinement adds anisotropic total
// variation (as core/qsm/inversion.h's TV-ADMM) and minimises
//
//   J_TV(chi) = 1/2 || M (D chi - f) ||^2 + alpha sum_i || G_i chi ||_1
//               + lambda/2 || chi - chi_net ||^2
//
// (with alpha = 0, half of J: the same minimiser) by ADMM with the splits
// v = D chi and z_i = G_i chi, so that every step is closed form:
//
//   chi^ <- (rho_v D (v - u_v)^ + rho_z G^H (z - u_z)^ + lambda chi_net^)
//           / (rho_v D^2 + rho_z |G|^2 + lambda)
//   v    <- (M f + rho_v (D chi + u_v)) / (M + rho_v)        (pointwise)
//   z    <- shrink(G chi + u_z, alpha / rho_z)               (soft threshold)
//   u_v  <- u_v + D chi - v,   u_z <- u_z + G chi - z
//
// starting from chi = chi_net, v = D chi_net, z = G chi_net, u = 0, with
// rho_v = 1 and rho_z = 100 alpha (TV-ADMM's ratio). chi lives on the grid
// padded by `pad` zero voxels per side, where M = 0 (the field is unknown
// there) and chi_net = 0; the FFTs and differences are periodic on that
// grid, and the result is its unpadded part. The network supplies what the
// field cannot determine, TV removes the streaks and noise that the data
// term lets through near the cone. It costs two forward and two inverse
// FFTs of the padded grid per iteration (a CG iteration: two padded filters,
// which skip the padding).
// deepqsm-infer's default since 2026-12-02 (`--refine-tv 5e-4`, lambda
// 1e-3, 40 iterations, pad 32, chosen on synthetic data: models/README.md).
// CPU only so far: deepqsm-infer runs it on the CPU after a GPU network.
#pragma once
#include <cstdint>
#include <vector>

#include "core/qsm/dipole.h"

namespace dq {

constexpr double kRefineLambda = 1e-2;
constexpr int kRefineIterations = 10;
// The most iterations a caller accepts (deepqsm-infer's --refine): 25 times
// deepqsm-infer's default; a billion ran for ever.
constexpr int kRefineMaxIterations = 1000;
// Host memory per voxel of the padded grid that refine_chi holds at its
// peak: TV-ADMM keeps 14 float arrays and two complex half spectra (CG
// fewer), rounded up.
constexpr double kRefineBytesPerPaddedVoxel = 64.0;

struct RefineOptions {
  int iterations = kRefineIterations;  // CG (or ADMM) iterations; 0 returns chi_net
  double lambda = kRefineLambda;       // weight of ||chi - chi_net||^2, > 0
  double k0_value = 1.0 / 3.0;         // D(0): the one the network's training data used
  int64_t pad = 0;                     // zero voxels per side for the FFTs
  double tv = 0.0;                     // alpha of J_TV above, >= 0; 0 = CG on J
};

// deepqsm-infer's defaults for the TV refinement (models/README.md): alpha,
// and lambda for `--refine-lambda auto` (a weaker pull to chi_net than CG's:
// TV, not the network, is what holds the noise back).
constexpr double kRefineTvAlpha = 5e-4;
// The TV refinement runs in float: alpha (when > 0) and lambda must lie in
// [kRefineTvWeightMin, kRefineTvWeightMax] (refine_chi refuses others).
constexpr double kRefineTvWeightMin = 1e-30;
constexpr double kRefineTvWeightMax = 1e30;
inline bool refine_tv_weight_ok(double w) {
  return w >= kRefineTvWeightMin && w <= kRefineTvWeightMax;
}
constexpr double kRefineTvLambda = 1e-3;
constexpr double kRefineTvRhoData = 1.0;         // rho_v of the TV refinement's ADMM
constexpr double kRefineTvRhoOverAlpha = 100.0;  // rho_z / alpha

// field, chi_net and chi are (dims.nz, dims.ny, dims.nx) in ppm; chi may
// alias chi_net (not field). mask is nullable. When `objective` is non-null
// it receives J (J_TV when opt.tv > 0) before the first iteration and after
// each one.
void refine_chi(const float* field, const float* chi_net, const uint8_t* mask, const Dims3& dims,
                const Vec3& voxel_mm, const Vec3& b0_dir, const RefineOptions& opt, float* chi,
                std::vector<double>* objective = nullptr);

// A refinement diverges when weights far outside what it was tuned for
// (alpha 1e30, lambda 1e30: accepted, and representable) overflow its float
// arithmetic: J rose from 4e31 to 4e40 and the map came out constant. The
// first iteration whose J (objective[i], i >= 1) is not finite or more than
// kRefineDivergence times J before the first iteration; 0 when none. ADMM's
// J need not fall at every step, but never rises a thousandfold on a
// converging run. refine_chi (both methods) fails at that iteration, naming
// it, the values and the weights; deepqsm-infer checks the GPU CG's trace.
constexpr double kRefineDivergence = 1e3;
int refine_diverged_at(const std::vector<double>& objective);
[[noreturn]] void fail_refine_diverged(const std::vector<double>& objective, int at,
                                       const RefineOptions& opt);

// lambda matched to the field's noise: sigma^2 / tau^2 is the MAP weight for
// white noise of sd sigma on the field and a network error of sd tau on chi.
// tau = 0.02 ppm makes it the fixed kRefineLambda at 0.002 ppm, the noise the
// shipped model was trained with; it never drops below kRefineLambda (a clean
// field still leans on the network near the cone). deepqsm-infer's default
// (`--refine-lambda auto`, sigma from estimate_noise_std in core/qsm/volume_ops.h),
// chosen on synthetic data (models/README.md).
constexpr double kRefineNetErrorPpm = 0.02;
double refine_lambda_for_noise(double noise_std_ppm);

// J(chi) as above, the CG refinement's (opt.tv is not used).
double refine_objective(const float* chi, const float* field, const float* chi_net,
                        const uint8_t* mask, const Dims3& dims, const Vec3& voxel_mm,
                        const Vec3& b0_dir, const RefineOptions& opt);

}  // namespace dq
