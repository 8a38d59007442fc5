// Data parallelism on the CPU: the real binary under `mpirun -np 2` with a
// global batch of 2B (B per rank) must reach the weights of one process with
// batch 2B, up to fp32 rounding (the gradient sums are added in another
// order). Dropout is on (the paper's 0.05): each rank's samples draw the
// masks of their place in the global batch, so the masks are the same too.
// And the all-reduce overlapped with the backward pass, in many small
// buckets, must give the weights of the one call after it, bit for bit.
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/nn/checkpoint.h"
#include "tests/train_util.h"
#include "train/config.h"

using namespace dq;
namespace fs = std::filesystem;

namespace {
bool have_mpirun() {
  return std::system("command -v mpirun >/dev/null 2>&1") == 0;
}

int run(const std::string& cmd) {
  const int status = std::system(cmd.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

TrainConfig dp_config() {
  TrainConfig cfg = dq::test::tiny_config();
  cfg.model.dropout = 0.05f;
  cfg.batch = 4;
  cfg.steps = 6;
  cfg.train_volumes = 2;
  cfg.checkpoint_every = 0;
  cfg.tensorboard = false;
  return cfg;
}

// Trains `cfg` with the deepqsm binary into a fresh `out` (a folder under
// the temporary directory) on `ranks` MPI ranks (0: no mpirun); returns the
// final checkpoint.
CheckpointData train(const TrainConfig& cfg, const std::string& out, int ranks) {
  const fs::path tmp = fs::temp_directory_path();
  const std::string config = (tmp / (out + ".json")).string(), dir = (tmp / out).string();
  std::ofstream(config) << train_config_to_json(cfg);
  fs::remove_all(dir);
  const std::string bin = std::string("'") + DEEPQSM_BINARY + "' train --quiet --config '" +
                          config + "' --out '" + dir + "' > /dev/null";
  // No OMP_NUM_THREADS: each rank takes its share of the node's threads by
  // itself (train/comm_mpi.cpp), as a user's mpirun gets.
  const std::string cmd = ranks == 0 ? bin
                                     : "mpirun -np " + std::to_string(ranks) +
                                           " --oversubscribe --allow-run-as-root " + bin;
  REQUIRE(run(cmd) == 0);
  return load_checkpoint(dir + "/checkpoint.h5");
}

bool same_bytes(const Tensor& a, const Tensor& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}
}  // namespace

TEST_CASE("2 MPI ranks x batch B train like 1 rank x batch 2B", "[dataparallel]") {
  if (!have_mpirun()) {
    WARN(
        "skipped: mpirun is not installed (Debian: openmpi-bin), so the two-rank run cannot start");
    return;
  }
  const TrainConfig cfg = dp_config();  // the all-reduce overlapped, by default
  const CheckpointData a = train(cfg, "deepqsm-test-dp-1", 0);
  const CheckpointData b = train(cfg, "deepqsm-test-dp-2", 2);
  REQUIRE(a.step == 6);
  REQUIRE(b.step == 6);
  double max_diff = 0, max_abs = 0;
  for (int64_t i = 0; i < a.params.numel(); ++i) {
    max_diff = std::max(max_diff, double(std::fabs(a.params.f32()[i] - b.params.f32()[i])));
    max_abs = std::max(max_abs, double(std::fabs(a.params.f32()[i])));
  }
  INFO("max |difference| " << max_diff << ", max |weight| " << max_abs);
  CHECK(max_diff <= 1e-5 * max_abs);
  // And the run moved the weights far more than that, so the check means something.
  CHECK(max_abs > 0.01);
}

TEST_CASE("2 MPI ranks: the overlapped all-reduce matches the one-call all-reduce bit for bit",
          "[dataparallel]") {
  if (!have_mpirun()) {
    WARN("skipped: mpirun is not installed (Debian: openmpi-bin)");
    return;
  }
  TrainConfig cfg = dp_config();
  // 1 KiB buckets: the tiny U-Net's 4,725 gradients go out in 3 buckets,
  // one per level (the finest grain UNet::backward reports for it).
  cfg.allreduce_bucket_kb = 1;
  // Loss scaling at scales where the gradients overflow now and then (the
  // +-100 ppm targets make fp32 gradients large enough): every rank must
  // skip the same steps, or the checkpoint's cross-rank weight check fails.
  cfg.data.chi_min = -100.0;
  cfg.data.chi_max = 100.0;
  cfg.loss_scale = "dynamic";
  cfg.loss_scale_init = 0x1p127f;
  cfg.loss_scale_growth_interval = 1;
  cfg.steps = 16;
  TrainConfig one_call = cfg;
  one_call.allreduce_overlap = false;
  const CheckpointData a = train(one_call, "deepqsm-test-dp-one-call", 2);
  const CheckpointData b = train(cfg, "deepqsm-test-dp-overlap", 2);
  REQUIRE(a.step == 16);
  REQUIRE(b.step == 16);
  CHECK(same_bytes(a.params, b.params));
  CHECK(same_bytes(a.adam_m, b.adam_m));
  CHECK(same_bytes(a.adam_v, b.adam_v));
  INFO("skipped " << b.state.loss_scale.skipped_steps << " of 16 steps");
  CHECK(a.state.loss_scale.skipped_steps == b.state.loss_scale.skipped_steps);
  CHECK(a.state.loss_scale.scale == b.state.loss_scale.scale);
  CHECK(b.state.loss_scale.skipped_steps >= 1);
  CHECK(b.state.loss_scale.skipped_steps <= 10);
}
