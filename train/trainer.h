// The training loop: builds the U-Net from the config, generates the
// synthetic training and held-out sets, runs Adam on MSE, validates against
// TKD on the held-out patches, and writes HDF5 checkpoints.
#pragma once
#include <cstdint>
#include <string>

#include "train/config.h"

namespace dq {

struct TrainOptions {
  int64_t steps_override = -1;  // --steps
  std::string out_dir;          // --out (empty: the config's out_dir)
  bool quiet = false;           // no progress line (tests)
};

struct TrainResult {
  int64_t steps = 0;
  double final_loss = 0;   // training loss of the last step
  double val_mse = 0;      // network MSE on the held-out patches (ppm^2)
  double tkd_val_mse = 0;  // TKD (threshold 0.19) MSE on the same patches
  double zero_val_mse = 0; // MSE of predicting chi = 0 (the variance floor to beat)
  std::string checkpoint;  // path of the last checkpoint written
};

TrainResult run_training(const TrainConfig& cfg, const TrainOptions& opt);

}  // namespace dq
