// A fixed-seed training run of bounded length on the CPU: the network must
// end with a lower held-out MSE than truncated k-space division (TKD,
// threshold 0.19) on the same patches, and the run must be reproducible.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>

#include "core/io/h5io.h"
#include "core/io/nifti_io.h"
#include "core/nn/checkpoint.h"
#include "core/qsm/phantom.h"
#include "synth/synth.h"
#include "tests/train_util.h"
#include "train/trainer.h"

using namespace dq;

namespace {
TrainConfig small_run(const std::string& out) {
  TrainConfig cfg;
  cfg.model.depth = 3;
  cfg.model.base_filters = 8;
  cfg.model.dropout = 0.05f;
  cfg.data.volume_size = 64;
  cfg.data.cubes_min = 10;
  cfg.data.cubes_max = 15;
  cfg.data.spheres_min = 10;
  cfg.data.spheres_max = 15;
  cfg.data.patch_size = 32;
  cfg.data.patches_per_volume = 16;
  cfg.train_volumes = 8;
  cfg.val_volumes = 1;
  cfg.steps = 300;
  cfg.batch = 4;
  cfg.validate_every = 0;
  cfg.checkpoint_every = 0;
  cfg.log_every = 50;
  cfg.seed = 2019;
  cfg.out_dir = (std::filesystem::temp_directory_path() / out).string();
  std::filesystem::remove_all(cfg.out_dir);
  return cfg;
}
}  // namespace

TEST_CASE("A short CPU training run beats TKD on held-out patches", "[train]") {
  TrainConfig cfg = small_run("deepqsm-test-train");
  TrainOptions opt;
  opt.quiet = true;
  TrainResult r = run_training(cfg, opt);
  INFO("held-out MSE " << r.val_mse << " vs TKD " << r.tkd_val_mse << " after " << r.steps
                       << " steps, last loss " << r.final_loss << ", zero predictor "
                       << r.zero_val_mse);
  CHECK(r.steps == cfg.steps);
  CHECK(r.val_mse < r.tkd_val_mse);
  // And it has learned something: well below the variance of chi itself.
  CHECK(r.val_mse < 0.5 * r.zero_val_mse);
  REQUIRE(std::filesystem::exists(r.checkpoint));
  CheckpointData ck = load_checkpoint(r.checkpoint);
  CHECK(ck.step == cfg.steps);
  CHECK(ck.model.base_filters == 8);
}

TEST_CASE("Training is reproducible from the seed", "[train]") {
  TrainConfig cfg = small_run("deepqsm-test-repro-a");
  cfg.steps = 3;
  TrainOptions opt;
  opt.quiet = true;
  TrainResult a = run_training(cfg, opt);
  TrainConfig cfg2 = small_run("deepqsm-test-repro-b");
  cfg2.steps = 3;
  TrainResult b = run_training(cfg2, opt);
  CHECK(a.final_loss == b.final_loss);
  CheckpointData ca = load_checkpoint(a.checkpoint), cb = load_checkpoint(b.checkpoint);
  CHECK(std::equal(ca.params.f32(), ca.params.f32() + ca.params.numel(), cb.params.f32()));
}

TEST_CASE("Training reads patches from an HDF5 patch file", "[train]") {
  // Patches from the generator, written in the documented layout
  // (N, P, P, P, 1) float32 "field" and "chi".
  TrainConfig cfg = dq::test::tiny_config();
  const PatchSet set = generate_patches(cfg.data, 99, 0, 1);
  const auto dir = std::filesystem::temp_directory_path() / "deepqsm-test-patchfile";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  const std::string file = (dir / "patches.h5").string();
  {
    H5File f(file, H5File::Mode::truncate);
    f.write_floats("field", set.field.shape().dims, set.field.f32());
    f.write_floats("chi", set.chi.shape().dims, set.chi.f32());
  }
  cfg.source = "hdf5";
  cfg.patch_file = file;
  cfg.steps = 3;
  cfg.tensorboard = false;
  cfg.out_dir = (dir / "run").string();
  TrainOptions opt;
  opt.quiet = true;
  const TrainResult r = run_training(cfg, opt);
  CHECK(r.steps == 3);
  CHECK(std::isfinite(r.final_loss));
  CHECK(r.final_loss > 0);

  // A patch side that does not match data.patch_size is refused, naming it.
  cfg.data.patch_size = 32;
  cfg.data.volume_size = 64;
  cfg.out_dir = (dir / "run2").string();
  CHECK_THROWS_WITH(run_training(cfg, opt), Catch::Contains("data.patch_size 32"));

  // A missing input file is named before the output folder is made.
  cfg.patch_file = (dir / "absent.h5").string();
  cfg.out_dir = (dir / "run3").string();
  CHECK_THROWS_WITH(run_training(cfg, opt), Catch::Contains("data.patch_file: no such file"));
  CHECK_FALSE(std::filesystem::exists(cfg.out_dir));
  cfg.patch_file = file;

  // A fresh run never overwrites another run's checkpoints.
  cfg.out_dir = (dir / "run").string();
  CHECK_THROWS_WITH(run_training(cfg, opt), Catch::Contains("already holds a run's checkpoints") &&
                                                Catch::Contains("--resume"));
}

TEST_CASE("train.init_from starts from a model file's weights", "[train]") {
  TrainConfig a = dq::test::tiny_run("deepqsm-test-init-a");
  a.steps = 3;
  const TrainResult ra = run_training(a, dq::test::quiet());
  const CheckpointData ca = load_checkpoint(ra.checkpoint);

  // With a learning rate far below fp32's resolution of the weights, the
  // run's weights after its steps are the loaded ones: nothing of the
  // seed's He initialisation is left, and the step count starts at 0.
  TrainConfig b = dq::test::tiny_run("deepqsm-test-init-b");
  b.init_from = ra.checkpoint;
  b.seed = a.seed + 1;
  b.steps = 2;
  b.optim.lr = 1e-30f;
  const TrainResult rb = run_training(b, dq::test::quiet());
  CHECK(rb.steps == 2);
  CHECK(rb.resumed_from == 0);
  const CheckpointData cb = load_checkpoint(rb.checkpoint);
  REQUIRE(cb.params.numel() == ca.params.numel());
  double max_diff = 0;
  for (int64_t i = 0; i < ca.params.numel(); ++i)
    max_diff = std::max(max_diff, std::fabs(double(cb.params.f32()[i]) - ca.params.f32()[i]));
  CHECK(max_diff < 1e-20);
  CHECK(cb.step == 2);

  // Another architecture is refused, naming the key and both shapes.
  TrainConfig c = dq::test::tiny_run("deepqsm-test-init-c");
  c.init_from = ra.checkpoint;
  c.model.base_filters = 8;
  CHECK_THROWS_WITH(run_training(c, dq::test::quiet()),
                    Catch::Contains("train.init_from") && Catch::Contains("base 4") &&
                        Catch::Contains("base 8"));
  // A missing file is one clear error.
  c.model.base_filters = 4;
  c.init_from = a.out_dir + "/no-such-model.h5";
  CHECK_THROWS_WITH(run_training(c, dq::test::quiet()), Catch::Contains("no-such-model.h5"));
}

TEST_CASE("A reference pair the metrics cannot score is refused before training", "[train]") {
  TrainConfig cfg = dq::test::tiny_run("deepqsm-test-badref");
  const auto dir = std::filesystem::path(cfg.out_dir).parent_path() / "deepqsm-test-badref-files";
  std::filesystem::create_directories(dir);
  const dq::Phantom ph = dq::make_head_phantom(32);
  const dq::Dims3& d = ph.dims;
  const std::string field = (dir / "field.nii").string(), chi = (dir / "chi.nii").string();
  dq::write_nifti_new(field, ph.field.data(), d.nx, d.ny, d.nz, ph.voxel_mm);
  const std::vector<float> constant(ph.chi.size(), 0.05f);
  dq::write_nifti_new(chi, constant.data(), d.nx, d.ny, d.nz, ph.voxel_mm);
  cfg.reference_field = field;
  cfg.reference_chi = chi;
  // It used to fail at the first validation, after the training it cut short.
  CHECK_THROWS_WITH(run_training(cfg, dq::test::quiet()),
                    Catch::Contains("constant inside the mask"));
  CHECK_FALSE(std::filesystem::exists(std::filesystem::path(cfg.out_dir) / "checkpoint.h5"));
}
