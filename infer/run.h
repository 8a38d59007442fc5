// The deepqsm-infer pipeline: read the field (and mask), convert to ppm,
// resample when B0 is tilted or voxels are anisotropic, pad or tile, run the
// U-Net on the CPU or CUDA backend, optionally refine for data consistency,
// undo the geometry, mask, write chi and a preview.
#pragma once
#include <cstdint>
#include <string>

#include "core/dims.h"
#include "core/qsm/refine.h"

namespace dq {

struct InferOptions {
  std::string field_path, out_path, mask_path, model_path, preview_path;
  std::string units = "ppm";  // ppm | hz | rad
  double b0_tesla = 0, te_s = 0;
  Vec3 b0_dir{0.0, 0.0, 1.0};   // (x, y, z) in the voxel axes of the input
  std::string device = "auto";  // auto | cpu | gpu
  int64_t tile = 0;             // 0 = whole volume unless it does not fit in memory
  int64_t halo = -1;            // -1 = from the network's receptive field
  double max_anisotropy = 1.1;  // largest/smallest voxel side above which we resample
  double max_tilt_deg = 0.5;    // B0 tilts up to this are treated as along z
  int scales = 2;  // network passes at 1, 1/2, ... of the resolution (core/qsm/ensemble.h)
  double scale_sigma = 16.0;    // blend between scales: Gaussian sigma, voxels of the finer grid
  int flips = 1;    // mirrored passes averaged per scale: 1, 2, 4 or 8 (core/qsm/ensemble.h)
  int refine = 40;  // data-consistency iterations after the net (ADMM or CG; 0 = off)
  // Weight of |chi - chi_net|^2 in the refinement; 0 = auto: refine_lambda_for_noise
  // (core/qsm/refine.h) of the field's estimate_noise_std (core/qsm/volume_ops.h).
  double refine_lambda = 0;
  int refine_pad = 32;  // zero voxels per side around the grid for the refinement's FFTs
  // alpha of the refinement's TV term (core/qsm/refine.h's J_TV, solved by ADMM);
  // 0 = conjugate gradients on the TV-free objective.
  double refine_tv = kRefineTvAlpha;
  int threads = 0;      // CPU threads (core/parallel.h); 0 = OMP_NUM_THREADS, else all
};

// Runs the pipeline, printing what it did on stdout (warnings on stderr).
// Failures are dq::Error with a one-line message. Returns the exit status.
int run_inference(const InferOptions& opt);

// The model used when --model is not given: $DEEPQSM_MODEL, else
// models/deepqsm-default.h5 next to the executable's folder (<exe>/../models,
// <exe>/models), else in the source tree this binary was built from.
std::string default_model_path();

}  // namespace dq
