// Data parallelism on the CPU: the real binary under `mpirun -np 2` with a
// global batch of 2B (B per rank) must reach the weights of one process with
// batch 2B, up to fp32 rounding (the gradient sums are added in another
// order). Dropout is on (the paper's 0.05): each rank's samples draw the
// masks of their place in the global batch, so the masks are the same too.
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "core/checkpoint.h"
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
}  // namespace

TEST_CASE("2 MPI ranks x batch B train like 1 rank x batch 2B", "[dataparallel]") {
  if (!have_mpirun()) {
    WARN(
        "skipped: mpirun is not installed (Debian: openmpi-bin), so the two-rank run cannot start");
    return;
  }
  TrainConfig cfg = load_train_config(std::string(DEEPQSM_SOURCE_DIR) + "/configs/test-tiny.json");
  cfg.model.dropout = 0.05f;
  cfg.batch = 4;
  cfg.steps = 6;
  cfg.train_volumes = 2;
  cfg.checkpoint_every = 0;
  cfg.tensorboard = false;
  const fs::path tmp = fs::temp_directory_path();
  const std::string config = (tmp / "deepqsm-test-dp.json").string();
  std::ofstream(config) << train_config_to_json(cfg);
  const std::string one = (tmp / "deepqsm-test-dp-1").string(),
                    two = (tmp / "deepqsm-test-dp-2").string();
  fs::remove_all(one);
  fs::remove_all(two);
  const std::string bin =
      std::string("'") + DEEPQSM_BINARY + "' train --quiet --config '" + config + "'";
  REQUIRE(run(bin + " --out '" + one + "' > /dev/null") == 0);
  // OMP/oneDNN threads would oversubscribe two ranks on a small machine;
  // one thread each keeps the test quick.
  REQUIRE(run("OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe --allow-run-as-root " + bin +
              " --out '" + two + "' > /dev/null") == 0);

  const CheckpointData a = load_checkpoint(one + "/checkpoint.h5");
  const CheckpointData b = load_checkpoint(two + "/checkpoint.h5");
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
