// HDF5 checkpoints. Layout (readable with h5py):
//   /            attrs: format = "deepqsm-checkpoint", version = 1, step,
//                       config (the full training config as JSON),
//                       depth, base_filters, dropout, residual, head_kernel
//   /params/<name>   one dataset per parameter, in its own shape
//                    (conv (Co,k,k,k,Ci), transposed conv (Ci,2,2,2,Co))
//   /adam/m, /adam/v the Adam moments as flat buffers (training only)
// Files are written to "<path>.tmp" and renamed, so a crash never leaves a
// half-written checkpoint under the real name.
#pragma once
#include <cstdint>
#include <string>

#include "core/tensor.h"
#include "core/unet.h"

namespace dq {

struct CheckpointData {
  UNetConfig model;
  Tensor params;  // host, layout of UNet(model).layout()
  Tensor adam_m, adam_v;  // host; empty when the file holds weights only
  int64_t step = 0;
  std::string config_json;
};

void save_checkpoint(const std::string& path, const UNet& net, const Tensor& params,
                     const Tensor* adam_m, const Tensor* adam_v, int64_t step,
                     const std::string& config_json);
// Reads a checkpoint; with weights_only the Adam moments are skipped.
CheckpointData load_checkpoint(const std::string& path, bool weights_only = false);

}  // namespace dq
