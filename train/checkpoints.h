// A training run's folder and its checkpoints (train.out_dir or --out):
//   checkpoint-<step, 8 digits>.h5   the newest train.keep_checkpoints of them
//   checkpoint.h5                    hard link to the newest (what infer loads)
// and the check that --resume continues the same run.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/nn/checkpoint.h"
#include "train/config.h"

namespace dq {

// The newest checkpoint in `dir` (highest step among checkpoint-*.h5, else
// checkpoint.h5), or "" when there is none.
std::string newest_checkpoint(const std::string& dir);
// The checkpoint-<step>.h5 files in `dir`, oldest step first.
std::vector<std::string> step_checkpoint_paths(const std::string& dir);

// Writes checkpoint-<step>.h5 in `dir` (save_checkpoint's arguments), points
// checkpoint.h5 at it and removes the oldest step files beyond `keep`.
// Returns the step file's path.
std::string write_run_checkpoint(const std::string& dir, int64_t keep, const UNet& net,
                                 const Tensor& params, const Tensor& adam_m, const Tensor& adam_v,
                                 int64_t step, const std::string& config_json,
                                 const TrainingState& state);

// Fails, listing the differences, when the config stored in the checkpoint
// at `path` differs from `cfg` in anything but the keys that may change on
// resume (how long, where, how often to report, on what device).
void check_resumable(const std::string& path, const std::string& stored, const TrainConfig& cfg);

}  // namespace dq
