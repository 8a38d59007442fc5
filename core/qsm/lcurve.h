// The regularisation weight of Tikhonov and TV chosen per case by the
// L-curve (Hansen & O'Leary, SIAM J. Sci. Comput. 14:1487, 1993; for QSM
// e.g. Bilgic et al. 2014 and Liu et al. 2012): solve for each lambda of a
// log-spaced grid, plot eta = log ||regulariser(chi)|| against rho = log
// ||M (D chi - f)|| and take the corner, the point of maximum curvature
//   kappa = (rho' eta'' - rho'' eta') / (rho'^2 + eta'^2)^(3/2),
// derivatives with respect to t = log lambda by three-point finite
// differences (non-uniform spacing allowed). The curve runs from small
// lambda (small residual, large norm: the vertical arm) to large lambda
// (the horizontal arm), so the corner turns counter-clockwise and its
// curvature is positive. The end points have no curvature and are never
// chosen.
//
// The regulariser's norm is the method's own: Tikhonov identity ||M chi||_2,
// Tikhonov gradient ||M G chi||_2, TV sum_i ||M G_i chi||_1 (forward
// differences inside the grid, ppm/mm). The residual is the data term inside
// the mask (the whole grid without one), ||M (D chi - f)||_2, with the
// method's own D(0) and padding.
#pragma once
#include <cstdint>
#include <vector>

#include "core/qsm/inversion.h"

namespace dq {

struct LCurvePoint {
  double lambda = 0;
  double residual = 0;     // ||M (D chi - f)||_2, ppm
  double regulariser = 0;  // the method's norm of chi
};

// Index of the corner of points sorted by increasing lambda (>= 3 points,
// all norms > 0); `curvature` (optional) receives kappa per point (0 at the
// two ends).
size_t lcurve_corner(const std::vector<LCurvePoint>& points,
                     std::vector<double>* curvature = nullptr);

// `count` lambdas from lo to hi, log-spaced (count >= 3, 0 < lo < hi).
std::vector<double> log_spaced(double lo, double hi, int count);

// The default grids: Tikhonov 1e-4 .. 1 (13 points), TV 1e-5 .. 1e-2
// (7 points), each around the literature default.
std::vector<double> tikhonov_lcurve_lambdas();
std::vector<double> tv_lcurve_lambdas();

struct LCurveResult {
  std::vector<LCurvePoint> points;
  size_t corner = 0;
  std::vector<float> chi;  // the solution at the corner's lambda, (nz, ny, nx)
};

// Tikhonov (core/qsm/inversion.h) at every lambda; chi at the corner.
LCurveResult tikhonov_lcurve(const float* field, const uint8_t* mask, const Dims3& dims,
                             const Vec3& voxel_mm, const Vec3& b0_dir, TikhonovReg reg,
                             double k0_value, int64_t pad, const std::vector<double>& lambdas);

// TV-ADMM at every lambda (rho = rho_over_lambda * lambda, other settings
// from `opt`); chi at the corner.
LCurveResult tv_lcurve(const float* field, const uint8_t* mask, const Dims3& dims,
                       const Vec3& voxel_mm, const Vec3& b0_dir, const TvOptions& opt,
                       double rho_over_lambda, double k0_value, int64_t pad,
                       const std::vector<double>& lambdas);

}  // namespace dq
