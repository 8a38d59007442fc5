// The JSON config layer (train/config.cpp) and Recipe::validate: valid files
// parse, defaults fill every gap, and each class of mistake is refused with a
// dq::Error whose message names the file and the key at fault.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>

#include "core/error.h"
#include "train/config.h"

namespace {

using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

const std::string kSource = DEEPQSM_SOURCE_DIR;

// The message of the dq::Error that parsing throws, or "" when it parses.
// Any other exception type escapes and fails the test.
std::string error_of(const std::string& text) {
  try {
    dq::parse_train_config(text, "cfg.json");
  } catch (const dq::Error& e) {
    return e.what();
  }
  return "";
}

std::string recipe_error(const dq::Recipe& r) {
  try {
    r.validate();
  } catch (const dq::Error& e) {
    return e.what();
  }
  return "";
}

// TrainConfig has no operator==; the canonical dump covers every field.
std::string canon(const dq::TrainConfig& c) {
  return dq::train_config_to_json(c);
}

}  // namespace

TEST_CASE("every config in configs/ parses and round-trips", "[config]") {
  int n = 0;
  for (const auto& entry : std::filesystem::directory_iterator(kSource + "/configs")) {
    if (entry.path().extension() != ".json") continue;
    INFO(entry.path().string());
    const dq::TrainConfig cfg = dq::load_train_config(entry.path().string());
    CHECK(canon(dq::parse_train_config(canon(cfg), "dump")) == canon(cfg));
    ++n;
  }
  CHECK(n >= 3);
}

TEST_CASE("the embedded default is configs/smoke-cpu.json", "[config]") {
  const dq::TrainConfig file = dq::load_train_config(kSource + "/configs/smoke-cpu.json");
  const dq::TrainConfig embedded =
      dq::parse_train_config(dq::default_train_config_json(), "embedded");
  CHECK(canon(embedded) == canon(file));
  CHECK(embedded.device == "cpu");
}

TEST_CASE("the paper config is the paper's recipe", "[config]") {
  const dq::TrainConfig c = dq::load_train_config(kSource + "/configs/deepqsm-paper.json");
  CHECK(c.model.depth == 5);
  CHECK(c.model.base_filters == 16);
  CHECK(c.data.volume_size == 160);
  CHECK(c.data.patch_size == 64);
  CHECK(c.data.cubes_min == 80);
  CHECK(c.data.spheres_max == 120);
  CHECK(c.data.patches_per_volume == 100);
  CHECK(c.train_volumes == 1000);
  CHECK(c.steps == 91600);
  CHECK(c.batch == 40);
  CHECK(c.device == "gpu");
  CHECK(c.precision == "fp32");
}

TEST_CASE("missing keys take the struct defaults", "[config]") {
  CHECK(canon(dq::parse_train_config("{}", "empty")) == canon(dq::TrainConfig{}));

  const dq::TrainConfig c = dq::parse_train_config(
      R"({"model": {"depth": 3}, "optim": {"lr": 5e-4}, "train": {"steps": 1e3}})", "partial");
  const dq::TrainConfig d;
  CHECK(c.model.depth == 3);
  CHECK(c.model.base_filters == d.model.base_filters);
  CHECK(c.optim.lr == Approx(5e-4));
  CHECK(c.optim.beta2 == d.optim.beta2);
  CHECK(c.steps == 1000);
  CHECK(c.batch == d.batch);
  CHECK(c.data.volume_size == d.data.volume_size);
}

TEST_CASE("b0_dir is normalised to unit length", "[config]") {
  const dq::TrainConfig c = dq::parse_train_config(R"({"data": {"b0_dir": [0, 3, 4]}})", "b0");
  CHECK(c.data.b0_dir[0] == 0.0);
  CHECK(c.data.b0_dir[1] == Approx(0.6));
  CHECK(c.data.b0_dir[2] == Approx(0.8));
  CHECK_THAT(error_of(R"({"data": {"b0_dir": [0, 0, 0]}})"), Contains("data.b0_dir"));
}

TEST_CASE("malformed JSON names the file and the position", "[config]") {
  const std::string msg = error_of("{\n  \"model\": {\"depth\": 3,}\n}");
  CHECK_THAT(msg, StartsWith("cfg.json: invalid JSON at line 2"));
  CHECK(msg.find('\n') == std::string::npos);
  CHECK_THAT(error_of(""), StartsWith("cfg.json: invalid JSON"));
  CHECK_THAT(error_of("[1, 2]"), Contains("expected an object"));
}

TEST_CASE("unknown keys are refused with their full path", "[config]") {
  CHECK_THAT(error_of(R"({"model": {"base_filter": 8}})"),
             StartsWith("cfg.json: model.base_filter: unknown key") &&
                 Contains("did you mean base_filters?"));
  CHECK_THAT(error_of(R"({"model": {"steps": 8}})"),
             Contains("model.steps: unknown key") && Contains("train.steps"));
  CHECK_THAT(error_of(R"({"optimizer": {}})"), Contains("optimizer: unknown key"));
  CHECK_THAT(error_of(R"({"train": {"steps": 1, "steps": 2}})"),
             Contains("train.steps: duplicate key"));
}

TEST_CASE("wrong types are refused with the expected type", "[config]") {
  CHECK_THAT(error_of(R"({"optim": {"lr": "0.001"}})"),
             StartsWith("cfg.json: optim.lr: expected a number, got a string"));
  CHECK_THAT(error_of(R"({"train": {"batch": 2.5}})"),
             Contains("train.batch: expected an integer"));
  CHECK_THAT(error_of(R"({"model": {"residual": 1}})"),
             Contains("model.residual: expected true or false"));
  CHECK_THAT(error_of(R"({"data": {"cubes": [1, 2, 3]}})"),
             Contains("data.cubes: expected [min, max]"));
  CHECK_THAT(error_of(R"({"data": {"voxel_mm": 1}})"),
             Contains("data.voxel_mm: expected [x, y, z]"));
  CHECK_THAT(error_of(R"({"data": {"chi": [0, "1"]}})"), Contains("data.chi[1]"));
  CHECK_THAT(error_of(R"({"model": []})"), Contains("model: expected an object"));
  CHECK_THAT(error_of(R"({"train": {"device": 0}})"), Contains("train.device: expected a string"));
}

TEST_CASE("out-of-range values are refused", "[config]") {
  CHECK_THAT(error_of(R"({"model": {"depth": 7}})"), Contains("model.depth"));
  CHECK_THAT(error_of(R"({"model": {"depth": 1}})"), Contains("model.depth"));
  CHECK_THAT(error_of(R"({"model": {"base_filters": 0}})"), Contains("model.base_filters"));
  CHECK_THAT(error_of(R"({"model": {"dropout": 1}})"), Contains("model.dropout"));
  CHECK_THAT(error_of(R"({"model": {"head_kernel": 2}})"), Contains("model.head_kernel"));
  CHECK_THAT(error_of(R"({"optim": {"lr": 0}})"), Contains("optim.lr"));
  CHECK_THAT(error_of(R"({"optim": {"beta2": 1}})"), Contains("optim.beta2"));
  CHECK_THAT(error_of(R"({"optim": {"eps": -1}})"), Contains("optim.eps"));
  CHECK_THAT(error_of(R"({"optim": {"lr": 1e50}})"), Contains("optim.lr") && Contains("32-bit"));
  CHECK_THAT(error_of(R"({"train": {"steps": 0}})"), Contains("train.steps"));
  CHECK_THAT(error_of(R"({"train": {"batch": 0}})"), Contains("train.batch"));
  CHECK_THAT(error_of(R"({"train": {"seed": -1}})"), Contains("train.seed"));
  CHECK_THAT(error_of(R"({"train": {"device": "tpu"}})"), Contains("train.device"));
  CHECK_THAT(error_of(R"({"train": {"precision": "fp8"}})"), Contains("train.precision"));
  CHECK_NOTHROW(
      dq::parse_train_config(R"({"data": {"source": "stream", "train_volumes": 0}})", "t"));
  CHECK_THAT(error_of(R"({"data": {"source": "stream", "refresh_every": 4}})"),
             Contains("data.refresh_every"));
  CHECK_THAT(error_of(R"({"data": {"train_volumes": 0}})"), Contains("data.train_volumes"));
  CHECK_THAT(error_of(R"({"data": {"cubes": [1, 3000000000]}})"), Contains("data.cubes[1]"));
}

TEST_CASE("the patch side must suit the U-Net's poolings", "[config]") {
  CHECK_THAT(error_of(R"({"data": {"patch_size": 40}})"),
             Contains("data.patch_size 40 is not a multiple of 16 (the U-Net with depth 5 pools "
                      "4 times)"));
  CHECK(error_of(R"({"model": {"depth": 4}, "data": {"patch_size": 40}})") == "");
}

TEST_CASE("impossible recipes are refused naming the data key", "[config]") {
  CHECK_THAT(error_of(R"({"data": {"chi_std": -0.1}})"), Contains("data.chi_std"));
  CHECK_THAT(error_of(R"({"data": {"noise_std": [0.01, 0]}})"), Contains("data.noise_std"));
  CHECK_THAT(error_of(R"({"data": {"size": [-0.1, 0.4]}})"), Contains("data.size"));
  CHECK_THAT(error_of(R"({"data": {"size": [0.4, 0.1]}})"), Contains("data.size"));
  CHECK_THAT(error_of(R"({"data": {"volume_size": -5}})"), Contains("data.volume_size"));
  CHECK_THAT(error_of(R"({"data": {"patch_size": 256}})"),
             Contains("data.patch_size") && Contains("larger than data.volume_size"));
  CHECK_THAT(error_of(R"({"data": {"cubes": [0, 0], "spheres": [0, 0]}})"),
             Contains("empty counts"));
  CHECK_THAT(error_of(R"({"data": {"spheres": [5, 2]}})"), Contains("data.spheres"));
  CHECK_THAT(error_of(R"({"data": {"cubes": [-1, 2]}})"), Contains("data.cubes"));
  CHECK_THAT(error_of(R"({"data": {"chi": [0.2, -0.2]}})"), Contains("data.chi"));
  CHECK_THAT(error_of(R"({"data": {"voxel_mm": [1, 0, 1]}})"), Contains("data.voxel_mm"));
  CHECK_THAT(error_of(R"({"data": {"pad": -1}})"), Contains("data.pad"));
  CHECK_THAT(error_of(R"({"data": {"patches_per_volume": 0}})"),
             Contains("data.patches_per_volume"));
}

TEST_CASE("Recipe::validate on recipes built in code", "[config]") {
  CHECK(recipe_error(dq::Recipe{}) == "");
  dq::Recipe r;
  r.size_min = -0.1;
  CHECK_THAT(recipe_error(r), Contains("data.size"));
  r = dq::Recipe{};
  r.patch_size = r.volume_size + 16;
  CHECK_THAT(recipe_error(r), Contains("data.patch_size"));
  r = dq::Recipe{};
  r.cubes_max = r.cubes_min = r.spheres_max = r.spheres_min = 0;
  CHECK_THAT(recipe_error(r), Contains("empty counts"));
  r = dq::Recipe{};
  r.b0_dir = {0.0, 0.0, 2.0};
  CHECK_THAT(recipe_error(r), Contains("data.b0_dir"));
}

TEST_CASE("load_train_config reports a missing file", "[config]") {
  const std::string path = kSource + "/configs/does-not-exist.json";
  try {
    dq::load_train_config(path);
    FAIL("no error for a missing file");
  } catch (const dq::Error& e) {
    CHECK_THAT(std::string(e.what()), StartsWith(path) && Contains("cannot open"));
  }
}

TEST_CASE("data source, logging and reference keys are checked", "[config]") {
  const dq::TrainConfig d;
  CHECK(d.source == "generator");
  CHECK(d.refresh_every == 0);
  CHECK(d.keep_checkpoints == 2);
  CHECK(d.tensorboard);
  CHECK(d.log_file == "log.jsonl");
  CHECK_THAT(error_of(R"({"data": {"source": "tfrecord"}})"),
             Contains("data.source") && Contains("\"hdf5\""));
  CHECK_THAT(error_of(R"({"data": {"source": "hdf5"}})"), Contains("data.patch_file"));
  CHECK_THAT(error_of(R"({"data": {"patch_file": "p.h5"}})"), Contains("data.patch_file"));
  CHECK_THAT(error_of(R"({"data": {"source": "hdf5", "patch_file": "p.h5", "refresh_every": 5}})"),
             Contains("data.refresh_every"));
  CHECK_THAT(error_of(R"({"data": {"refresh_every": -1}})"), Contains("data.refresh_every"));
  CHECK_THAT(error_of(R"({"data": {"patch_file": 3}})"),
             Contains("data.patch_file: expected a string"));
  CHECK_THAT(error_of(R"({"train": {"keep_checkpoints": 0}})"), Contains("train.keep_checkpoints"));
  CHECK_THAT(error_of(R"({"train": {"tensorboard": "yes"}})"),
             Contains("train.tensorboard: expected true or false"));
  CHECK_THAT(error_of(R"({"train": {"log_file": ""}})"), Contains("train.log_file"));
  CHECK_THAT(error_of(R"({"train": {"reference_field": "f.nii"}})"),
             Contains("train.reference_chi"));
  CHECK_THAT(error_of(R"({"train": {"reference_mask": "m.nii"}})"),
             Contains("train.reference_mask"));
  CHECK_THAT(error_of(R"({"train": {"tensorbord": true}})"),
             Contains("train.tensorbord: unknown key") && Contains("tensorboard"));
  const dq::TrainConfig c = dq::parse_train_config(
      R"({"data": {"source": "hdf5", "patch_file": "p.h5"},
          "train": {"reference_field": "f.nii", "reference_chi": "c.nii", "tensorboard": false}})",
      "ok");
  CHECK(c.source == "hdf5");
  CHECK(c.patch_file == "p.h5");
  CHECK(c.reference_chi == "c.nii");
  CHECK_FALSE(c.tensorboard);
}

TEST_CASE("loss-scale and all-reduce keys are checked", "[config]") {
  const dq::TrainConfig d;
  CHECK(d.loss_scale == "auto");
  CHECK(d.loss_scale_init == 65536.0f);
  CHECK(d.loss_scale_growth_interval == 2000);
  CHECK(d.allreduce_overlap);
  CHECK(d.allreduce_bucket_kb == 1024);
  const dq::TrainConfig c = dq::parse_train_config(
      R"({"train": {"precision": "fp16", "loss_scale": "static", "loss_scale_init": 1024,
                    "loss_scale_growth_interval": 100, "allreduce_overlap": false,
                    "allreduce_bucket_kb": 64}})",
      "ok");
  CHECK(c.loss_scale == "static");
  CHECK(c.loss_scale_init == 1024.0f);
  CHECK(c.loss_scale_growth_interval == 100);
  CHECK_FALSE(c.allreduce_overlap);
  CHECK(c.allreduce_bucket_kb == 64);
  CHECK(canon(dq::parse_train_config(canon(c), "dump")) == canon(c));
  for (const char* mode : {"auto", "dynamic", "static", "off"})
    CHECK(error_of(std::string(R"({"train": {"loss_scale": ")") + mode + "\"}}") == "");

  CHECK_THAT(error_of(R"({"train": {"loss_scale": "on"}})"),
             StartsWith("cfg.json: train.loss_scale") && Contains("\"dynamic\""));
  CHECK_THAT(error_of(R"({"train": {"loss_scale": 128}})"),
             Contains("train.loss_scale: expected a string"));
  CHECK_THAT(error_of(R"({"train": {"loss_scale_init": "big"}})"),
             Contains("train.loss_scale_init: expected a number"));
  CHECK_THAT(error_of(R"({"train": {"loss_scale_init": 0.5}})"),
             Contains("train.loss_scale_init") && Contains("[1, 2^127]"));
  CHECK_THAT(error_of(R"({"train": {"loss_scale_init": 1e39}})"),
             Contains("train.loss_scale_init"));
  CHECK_THAT(error_of(R"({"train": {"loss_scale_growth_interval": 0}})"),
             Contains("train.loss_scale_growth_interval"));
  CHECK_THAT(error_of(R"({"train": {"loss_scale_growth_interval": 1.5}})"),
             Contains("train.loss_scale_growth_interval: expected an integer"));
  CHECK_THAT(error_of(R"({"train": {"allreduce_overlap": 1}})"),
             Contains("train.allreduce_overlap: expected true or false"));
  CHECK_THAT(error_of(R"({"train": {"allreduce_bucket_kb": 0}})"),
             Contains("train.allreduce_bucket_kb"));
  CHECK_THAT(error_of(R"({"train": {"loss_scaling": "off"}})"),
             Contains("train.loss_scaling: unknown key") && Contains("loss_scale"));
  CHECK_THAT(error_of(R"({"optim": {"loss_scale": "off"}})"),
             Contains("optim.loss_scale: unknown key") && Contains("train.loss_scale"));
}

TEST_CASE("the learning-rate schedule", "[config]") {
  SECTION("constant: optim.lr at every update, after an optional linear warm-up") {
    dq::TrainConfig c = dq::parse_train_config(R"({"optim": {"lr": 1e-3}})", "constant");
    CHECK(dq::scheduled_lr(c, 1) == c.optim.lr);
    CHECK(dq::scheduled_lr(c, 100000) == c.optim.lr);
    c = dq::parse_train_config(R"({"optim": {"lr": 1e-3, "warmup_steps": 4}})", "warm");
    CHECK(dq::scheduled_lr(c, 1) == Approx(0.25e-3));
    CHECK(dq::scheduled_lr(c, 2) == Approx(0.5e-3));
    CHECK(dq::scheduled_lr(c, 4) == Approx(1e-3));
    CHECK(dq::scheduled_lr(c, 5) == c.optim.lr);
  }
  SECTION("cosine: lr to lr_min over decay_steps after the warm-up, then lr_min") {
    const dq::TrainConfig c = dq::parse_train_config(
        R"({"optim": {"lr": 1e-3, "lr_min": 1e-5, "schedule": "cosine", "warmup_steps": 10,
            "decay_steps": 100}})",
        "cosine");
    CHECK(dq::scheduled_lr(c, 5) == Approx(0.5e-3));
    CHECK(dq::scheduled_lr(c, 10) == Approx(1e-3));
    // Half-way down the cosine: the mean of the two ends.
    CHECK(dq::scheduled_lr(c, 60) == Approx(0.5 * (1e-3 + 1e-5)));
    // A quarter of the way: lr_min + (lr - lr_min) (1 + cos(pi/4)) / 2.
    CHECK(dq::scheduled_lr(c, 35) == Approx(1e-5 + (1e-3 - 1e-5) * 0.8535533905932737));
    CHECK(dq::scheduled_lr(c, 110) == Approx(1e-5));
    CHECK(dq::scheduled_lr(c, 100000) == Approx(1e-5));
    for (int64_t t = 11; t < 110; ++t) CHECK(dq::scheduled_lr(c, t + 1) < dq::scheduled_lr(c, t));
    // The dump keeps the schedule.
    CHECK(canon(dq::parse_train_config(canon(c), "dump")) == canon(c));
  }
  SECTION("mistakes are refused, naming the key") {
    CHECK_THAT(error_of(R"({"optim": {"schedule": "step"}})"),
               Contains("optim.schedule") && Contains("\"cosine\""));
    CHECK_THAT(error_of(R"({"optim": {"schedule": "cosine"}})"),
               Contains("optim.decay_steps: must be >= 1"));
    CHECK_THAT(error_of(R"({"optim": {"decay_steps": 100}})"),
               Contains("optim.decay_steps: is only read"));
    CHECK_THAT(error_of(R"({"optim": {"lr": 1e-4, "lr_min": 1e-3}})"),
               Contains("optim.lr_min") && Contains("above optim.lr"));
    CHECK_THAT(error_of(R"({"optim": {"warmup_steps": -1}})"), Contains("optim.warmup_steps"));
    CHECK_THAT(error_of(R"({"optim": {"lr_min": -1e-4}})"), Contains("optim.lr_min"));
  }
}

TEST_CASE("train.autotune is a bool, on by default", "[config]") {
  CHECK(dq::parse_train_config("{}", "empty").autotune);
  CHECK_FALSE(dq::parse_train_config(R"({"train": {"autotune": false}})", "off").autotune);
  CHECK_THAT(error_of(R"({"train": {"autotune": 1}})"), Contains("train.autotune"));
}
