// What the trainer measures besides the loss: the held-out synthetic patches
// (and the same metrics for TKD, the baseline to beat), and an optional
// reference pair (train.reference_field / reference_chi / reference_mask), a
// whole volume such as a brain with a COSMOS map, run through the network at
// every validation. Metrics are core/qsm/metrics.h's (docs/metrics.md).
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "core/io/nifti_io.h"
#include "core/nn/unet.h"
#include "core/qsm/metrics.h"
#include "synth/synth.h"
#include "train/config.h"

namespace dq {

// mean((a - b)^2) over n values, in double.
double mse(const float* a, const float* b, int64_t n);

// Per-patch means of the image metrics over (N, P, P, P, 1) patches; patches
// whose reference is constant (all background) have no NRMSE or SSIM and are
// skipped for those, but count for the MSE.
struct PatchMetrics {
  double mse = 0, nrmse = 0, hfen = 0, xsim = 0;
  int64_t scored = 0;  // patches with a non-constant reference
};
PatchMetrics patch_metrics(const float* pred, const Tensor& ref, const Recipe& r);

// The network (weights `params` on be's device) on every held-out patch, one
// at a time, scored against the patches' chi.
PatchMetrics validate_patches(Backend& be, UNet& net, const Tensor& params, const PatchSet& set,
                              const Recipe& r);

// The optional evaluation pair, read once: field and reference chi (ppm),
// an optional mask, zero-padded at the far end of each axis to the U-Net's
// side multiple.
struct ReferencePair {
  Volume field, chi;
  std::vector<uint8_t> mask;  // empty: every voxel
  int64_t pd = 0, ph = 0, pw = 0;
};
// Reads and checks the pair named by cfg (what the metrics would refuse at
// the first validation is refused here, before the training it would cut short).
ReferencePair load_reference(const TrainConfig& cfg, int64_t multiple);

// The network on the whole reference field; its metrics against the
// reference chi, and the MSE inside the mask in *masked_mse. `net` is made
// on first use (the reference's buffers are large and kept apart).
Metrics validate_reference(Backend& be, std::unique_ptr<UNet>& net, const UNetConfig& model,
                           const Tensor& params, const ReferencePair& r, double* masked_mse);

}  // namespace dq
