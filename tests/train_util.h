// Shared by the tests that train: the tiny recipe (configs/test-tiny.json,
// a U-Net whose step takes milliseconds) and options without progress lines.
#pragma once
#include <filesystem>
#include <string>

#include "train/config.h"
#include "train/trainer.h"

namespace dq::test {

inline TrainConfig tiny_config() {
  return load_train_config(std::string(DEEPQSM_SOURCE_DIR) + "/configs/test-tiny.json");
}

// The tiny recipe writing to a fresh folder `out` under the temporary
// directory, without validation or TensorBoard.
inline TrainConfig tiny_run(const std::string& out) {
  TrainConfig cfg = tiny_config();
  cfg.validate_every = 0;
  cfg.tensorboard = false;
  cfg.out_dir = (std::filesystem::temp_directory_path() / out).string();
  std::filesystem::remove_all(cfg.out_dir);
  return cfg;
}

inline TrainOptions quiet() {
  TrainOptions opt;
  opt.quiet = true;
  return opt;
}

}  // namespace dq::test
