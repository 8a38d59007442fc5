// The training loop: builds the U-Net from the config, draws patches from the
// data source (train/patch_source.h), runs Adam on MSE with the global batch
// split over the ranks of a Communicator (train/comm.h), validates on a
// held-out synthetic set (and optionally a reference pair), logs, and writes
// HDF5 checkpoints that a resumed run continues from bit for bit.
//
// What makes resume exact: every random draw is keyed by (seed, step, ...)
// (core/nn/philox.h), the data source is a function of the step, and the
// checkpoint holds weights, both Adam moments, the step, the seed and the
// loss scaler's state (whose skipped-step count sets Adam's step count). Step
// s of a resumed run therefore sees the same batch, dropout masks and
// optimiser state as step s of an uninterrupted one. On a GPU the cuDNN
// engine of each layer must also be the same: with train.autotune (timing
// picks it) the two runs agree to rounding, without it bit for bit.
//
// Output directory (train.out_dir or --out; its checkpoints: train/checkpoints.h):
//   checkpoint-<step, 8 digits>.h5   the newest train.keep_checkpoints of them
//   checkpoint.h5                    hard link to the newest (what infer loads)
//   log.jsonl                        one JSON object per line (train.log_file)
//   tb/events.out.tfevents.*         TensorBoard scalars (train.tensorboard)
//
// SIGTERM or SIGINT (a batch system's time limit, Ctrl-C) stops the run
// after the step in progress with a checkpoint of that step, so --resume
// loses nothing; a second signal of the same kind ends it at once. Every
// rank stops at the same step: the stop request travels in the gradient
// all-reduce (train/stop_signals.h).
//
// Where it lives: the loop and its stages in train/trainer.cpp, the metrics
// of validation in train/validation.h, the run folder in train/checkpoints.h.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "train/checkpoints.h"
#include "train/config.h"

namespace dq {

struct TrainOptions {
  int64_t steps_override = -1;  // --steps
  std::string out_dir;          // --out (empty: the config's out_dir)
  bool resume = false;          // --resume: continue from the newest checkpoint in out_dir
  bool quiet = false;           // no progress line (tests)
};

struct TrainResult {
  int64_t steps = 0;       // steps completed, counting those before a resume
  int64_t resumed_from = 0;  // step of the checkpoint resumed from (0: fresh start)
  double final_loss = 0;   // training loss of the last step (mean over the global batch)
  double val_mse = 0;      // network MSE on the held-out patches (ppm^2)
  double val_nrmse = 0, val_hfen = 0, val_xsim = 0;  // means over held-out patches (%, %, -)
  double tkd_val_mse = 0;  // TKD (threshold 0.19) MSE on the same patches
  double zero_val_mse = 0; // MSE of predicting chi = 0 (the variance floor to beat)
  double loss_scale = 0;     // the loss scale after the last step (0: not scaled)
  int64_t skipped_steps = 0; // steps skipped for non-finite gradients, over the whole run
  std::string checkpoint;  // path of the last checkpoint written (rank 0)
  int stop_signal = 0;     // SIGTERM/SIGINT that stopped the run early (0: it ran to the end)
  int rank = 0, world = 1;
};

TrainResult run_training(const TrainConfig& cfg, const TrainOptions& opt);

}  // namespace dq
