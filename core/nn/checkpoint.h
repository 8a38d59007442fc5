// HDF5 checkpoints, version 3. Layout (readable with h5py):
//   /            attrs: format = "deepqsm-checkpoint", version = 3, step,
//                       config (the full training config as JSON),
//                       depth, base_filters, dropout, residual, head_kernel,
//                       seed (decimal string: the uint64 train.seed),
//                       data_position (which block of training volumes the
//                         data source was serving, core of streaming resume),
//                       loss_scale, loss_scale_clean_steps, skipped_steps
//                         (the loss scaler, core/nn/loss_scale.h; loss_scale 0
//                         when the run does not scale its loss),
//                       checksum_params, checksum (16 hex digits, see below)
//   /params/<name>   one dataset per parameter, in its own shape
//                    (conv (Co,k,k,k,Ci), transposed conv (Ci,2,2,2,Co))
//   /adam/m, /adam/v the Adam moments as flat buffers (training only)
//
// RNG state: every random stream is counter-based (core/nn/philox.h), keyed by
// (seed, step, purpose), so the seed and the step ARE the RNG state.
//
// Checksums are FNV-1a 64 over little-endian bytes: checksum_params over the
// parameters in layout order (each tensor's values, gaps excluded);
// checksum over those parameter bytes, then adam/m, adam/v (whole flat
// buffers), then step and seed as int64/uint64, then (version 3) the
// loss scale's float bits as uint64, loss_scale_clean_steps and
// skipped_steps as int64. Loading verifies
// checksum_params always and checksum when the moments are read, so a
// flipped bit or a truncated file is refused instead of resuming from
// garbage. Version 2 files (no loss-scale attributes: a run without loss
// scaling, the only kind version 2 could hold) load for inference and
// resume; version 1 files (no checksums, no seed) load for inference.
//
// Files are written to a temporary (temporary_name), fsynced and renamed, so a crash never
// leaves a half-written checkpoint under the real name. Non-finite weights
// or moments are never written and never loaded.
#pragma once
#include <cstdint>
#include <string>

#include "core/nn/loss_scale.h"
#include "core/nn/tensor.h"
#include "core/nn/unet.h"

namespace dq {

// What a training run needs beyond weights and moments to continue exactly.
struct TrainingState {
  uint64_t seed = 0;
  int64_t data_position = 0;
  LossScaleState loss_scale;  // scale 0: the run does not scale its loss
};

struct CheckpointData {
  UNetConfig model;
  Tensor params;  // host, layout of UNet(model).layout()
  Tensor adam_m, adam_v;  // host; empty when the file holds weights only
  int64_t step = 0;
  std::string config_json;
  int64_t version = 0;
  TrainingState state;  // zero for version 1 files; no loss scale before version 3
};

void save_checkpoint(const std::string& path, const UNet& net, const Tensor& params,
                     const Tensor* adam_m, const Tensor* adam_v, int64_t step,
                     const std::string& config_json, const TrainingState& state = {});
// A read still running after this long ends the process with one line
// (libhdf5 can loop on a damaged file; checkpoint.cpp's ReadWatchdog).
constexpr int kCheckpointReadSeconds = 120;
// Reads a checkpoint; with weights_only the Adam moments are skipped.
// Corrupted, truncated and foreign files fail with a message naming the path.
CheckpointData load_checkpoint(const std::string& path, bool weights_only = false);

// The first non-finite value of the parameters ("enc0.conv0.w[12] = nan")
// and, when given, of the Adam moments ("adam/m[7] = inf"); "" when every
// value is finite. A diverged run's weights are refused by save_checkpoint
// and load_checkpoint (and so by export, --resume and deepqsm-infer).
std::string first_non_finite(const UNet& net, const Tensor& params, const Tensor* adam_m = nullptr,
                             const Tensor* adam_v = nullptr);

// FNV-1a 64 of the parameters as checksum_params defines it.
uint64_t params_checksum(const UNet& net, const Tensor& params);

}  // namespace dq
