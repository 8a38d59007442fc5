// Classical dipole inversions, our baselines: closed-form Tikhonov and
// total-variation (TV) inversion by ADMM, on the CPU with FFTW
// (core/qsm/dipole.h's PaddedFilter and Fft3). TKD is in core/qsm/tkd.h.
// cuda/qsm/inversion.h runs the same algorithms on the GPU with the same
// numbers. Conventions (axes, units, D(k), padding) are
// those of core/qsm/dipole.h: field and chi are (nz, ny, nx) volumes in ppm,
// voxel_mm and b0_dir are (x, y, z), and `pad` zero voxels per side are
// added before the FFTs and cropped after.
//
// Finite differences are forward and periodic on the (padded) grid, in
// ppm/mm: (G_i chi)(r) = (chi(r + e_i) - chi(r)) / h_i. Their Fourier symbol
// is G_i(k) = (exp(2 pi i m_i / n_i) - 1) / h_i, so
// |G(k)|^2 = sum_i 4 sin^2(pi m_i / n_i) / h_i^2 (mm^-2), the negative
// discrete Laplacian's symbol.
//
// Tikhonov (Bilgic et al., JMRI 2014, "Fast image reconstruction with
// L2-regularization"):
//   identity:  chi = argmin ||D chi - f||^2 + lambda ||chi||^2
//              chi^ = D f^ / (D^2 + lambda)
//   gradient:  chi = argmin ||D chi - f||^2 + lambda ||G chi||^2
//              chi^ = D f^ / (D^2 + lambda |G|^2)
// A bin where the denominator is 0 (k = 0 with D(0) = 0 and gradient
// regularisation) gets chi^ = 0. Default lambda 1e-2, QSM.jl's default for
// its identical `tikh` (same formula, same lambda scale).
//
// TV (Bilgic et al., MRM 2014, "Fast quantitative susceptibility mapping with
// L1-regularization and automatic parameter selection"), anisotropic:
//   chi = argmin 1/2 ||D chi - f||^2 + lambda sum_i ||G_i chi||_1
// by ADMM with the split z = G chi, scaled dual u and penalty rho:
//   chi^ <- (D f^ + rho G^H (z - u)^) / (D^2 + rho |G|^2)    (closed form)
//   z    <- shrink(G chi + u, lambda / rho)                  (soft threshold)
//   u    <- u + G chi - z
// starting from chi = z = u = 0. Defaults lambda 1e-3, rho 100 lambda, at
// most 250 iterations, stopping when ||chi_k - chi_k-1|| / ||chi_k|| < 1e-3
// (QSM.jl's `tv` defaults). The mask, when given, zeroes chi outside it at
// the end; the data term covers the whole (padded) grid.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/qsm/dipole.h"

namespace dq {

enum class TikhonovReg { identity, gradient };
TikhonovReg tikhonov_reg_from_name(const std::string& name);  // "identity" | "gradient"

constexpr double kTikhonovLambda = 1e-2;
constexpr double kTvLambda = 1e-3;
constexpr double kTvRhoOverLambda = 100.0;
constexpr int kTvIterations = 250;
constexpr double kTvTolerance = 1e-3;

struct TvOptions {
  double lambda = kTvLambda;
  double rho = kTvRhoOverLambda * kTvLambda;  // ADMM penalty, in lambda's units
  int iterations = kTvIterations;             // upper bound
  double tolerance = kTvTolerance;            // relative chi change; 0 runs every iteration

  // Refuses settings (and a zero-padding width) the solver cannot use; the
  // CPU and GPU solvers both call it, so they refuse alike.
  void validate(int64_t pad) const;
};

// out (dims.padded(pad)) = in (dims) with `pad` zero voxels on every side,
// and its inverse, the unpadded part of a padded volume.
void pad_into(const float* in, const Dims3& dims, int64_t pad, float* out);
void crop_from(const float* in, const Dims3& dims, int64_t pad, float* out);

// |G(k)|^2 on the R2C half spectrum of `dims`, (nz, ny, nx/2 + 1), in mm^-2.
std::vector<float> gradient_symbol_sq(const Dims3& dims, const Vec3& voxel_mm);

// The Tikhonov filter D / (D^2 + lambda Gamma) on the half spectrum.
std::vector<float> tikhonov_inverse_kernel(const Dims3& dims, const Vec3& voxel_mm,
                                           const Vec3& b0_dir, double lambda, TikhonovReg reg,
                                           double k0_value);

// chi from field, both (nz, ny, nx) ppm; they may alias. mask (nullable,
// non-zero = inside) zeroes chi outside it.
void tikhonov(const float* field, const uint8_t* mask, const Dims3& dims, const Vec3& voxel_mm,
              const Vec3& b0_dir, double lambda, TikhonovReg reg, double k0_value, int64_t pad,
              float* chi);

// Anisotropic-TV objective 1/2 ||D chi - f||^2 + lambda sum_i ||G_i chi||_1
// on a grid `g` (already padded: chi and field are (g.nz, g.ny, g.nx)).
double tv_objective(const float* chi, const float* field, const Dims3& g, const Vec3& voxel_mm,
                    const Vec3& b0_dir, double lambda, double k0_value);

// TV-ADMM. When `objective` is non-null it receives the objective after
// every iteration (one extra FFT pair per iteration), measured on the
// padded grid before masking. Returns the number of iterations run.
int tv_admm(const float* field, const uint8_t* mask, const Dims3& dims, const Vec3& voxel_mm,
            const Vec3& b0_dir, const TvOptions& opt, double k0_value, int64_t pad, float* chi,
            std::vector<double>* objective = nullptr);

}  // namespace dq
