// The `deepqsm` binary end to end: bad configs end with exit status 1 (not a
// crash) and one stderr line naming the key; help texts describe the tool.
#include <sys/wait.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "core/io/nifti_io.h"
#include "core/io/output_files.h"
#include "core/nn/checkpoint.h"
#include "core/nn/unet.h"
#include "tests/test_util.h"
#include "train/config.h"
#include "train/trainer.h"

namespace {

using namespace dq::test;

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

Run run(const TempDir& dir, const std::string& args) {
  return run_program(dir, DEEPQSM_BINARY, args);
}

// A failure as the CLI promises it: exit status 1, one stderr line.
void check_one_line_failure(const Run& r, const std::string& key) {
  INFO("stderr: " << r.err);
  REQUIRE(r.exited());
  CHECK(r.code() == 1);
  CHECK_THAT(r.err, StartsWith("deepqsm: ") && Contains(key));
  CHECK(r.err.find('\n') == r.err.size() - 1);
}

}  // namespace

TEST_CASE("bad configs fail with one line naming the key", "[cli]") {
  TempDir dir("deepqsm-cli");
  struct Case {
    const char* file;
    const char* text;
    const char* key;
  };
  const Case cases[] = {
      {"malformed.json", "{\n  \"model\": {\"depth\": 3,}\n}", "invalid JSON at line 2"},
      {"unknown.json", R"({"model": {"base_filter": 8}})", "model.base_filter"},
      {"type.json", R"({"optim": {"lr": "fast"}})", "optim.lr"},
      {"patch.json", R"({"data": {"patch_size": 40}})", "data.patch_size"},
      {"recipe.json", R"({"data": {"size": [-0.1, 0.4]}})", "data.size"},
      {"overflow.json", R"({"optim": {"lr": 1e999}})",
       "overflow.json: invalid JSON: number overflow"},
      // Refused by config check too, not first when training starts.
      {"cpu_bf16.json", R"({"train": {"precision": "bf16", "device": "cpu"}})", "train.precision"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.write(c.file, c.text);
    SECTION(std::string("train --config ") + c.file) {
      check_one_line_failure(run(dir, "train --config '" + path + "'"), c.key);
    }
    SECTION(std::string("config check ") + c.file) {
      const Run r = run(dir, "config check '" + path + "'");
      check_one_line_failure(r, c.key);
      CHECK(r.out.empty());
    }
  }
}

TEST_CASE("a missing config file fails with one line", "[cli]") {
  TempDir dir("deepqsm-cli");
  const std::string path = (dir.path / "absent.json").string();
  check_one_line_failure(run(dir, "train --config '" + path + "'"), "absent.json");
  check_one_line_failure(run(dir, "config show '" + path + "'"), "absent.json");
}

TEST_CASE("config check and show accept the shipped configs", "[cli]") {
  TempDir dir("deepqsm-cli");
  const std::string smoke = std::string(DEEPQSM_SOURCE_DIR) + "/configs/smoke-cpu.json";
  const Run check = run(dir, "config check '" + smoke + "'");
  REQUIRE(check.exited());
  CHECK(check.code() == 0);
  CHECK_THAT(check.out, StartsWith("ok: "));

  const Run show = run(dir, "config show");
  REQUIRE(show.exited());
  CHECK(show.code() == 0);
  CHECK(show.out == dq::train_config_to_json(dq::load_train_config(smoke)));
  // docs/config.md prints the same, every key included.
  CHECK_THAT(dq::test::slurp(std::string(DEEPQSM_SOURCE_DIR) + "/docs/config.md"),
             Contains("```json\n" + show.out + "```"));

  // Every shipped config validates (docs/config.md's table lists them).
  for (const auto& e : fs::directory_iterator(std::string(DEEPQSM_SOURCE_DIR) + "/configs")) {
    INFO(e.path());
    const Run r = run(dir, "config check '" + e.path().string() + "'");
    CHECK(r.code() == 0);
    CHECK_THAT(r.out, StartsWith("ok: "));
  }
}

TEST_CASE("train --print-config applies overrides without training", "[cli]") {
  TempDir dir("deepqsm-cli");
  const Run r = run(dir, "train --steps 7 --out runs/elsewhere --device gpu --print-config");
  REQUIRE(r.exited());
  CHECK(r.code() == 0);
  const dq::TrainConfig cfg = dq::parse_train_config(r.out, "stdout");
  CHECK(cfg.steps == 7);
  CHECK(cfg.out_dir == "runs/elsewhere");
  CHECK(cfg.device == "gpu");
}

TEST_CASE("usage errors exit non-zero without a crash", "[cli]") {
  TempDir dir("deepqsm-cli");
  // args, what the message names ("" = anything)
  const std::pair<const char*, const char*> cases[] = {
      {"", ""},
      {"train --steps 0", "--steps: must be a whole number >= 1, got 0"},
      {"train --steps abc", "--steps: expected a whole number, got 'abc'"},
      {"phantom --size 8 -o p.nii", "--size: must be a whole number from 16 to 512"},
      {"train --device tpu", "--device"},
      {"frobnicate", ""},
      // A negative weight once meant "the default" silently.
      {"invert tikhonov f.nii -o c.nii --lambda -1", "--lambda"},
      {"invert tv f.nii -o c.nii --rho 0", "--rho"},
  };
  for (const auto& [args, names] : cases) {
    INFO(args);
    const Run r = run(dir, args);
    REQUIRE(r.exited());
    CHECK(r.code() != 0);
    CHECK_THAT(r.err, StartsWith("deepqsm: ") && Contains(names));
  }
}

TEST_CASE("help texts describe the tool", "[cli]") {
  TempDir dir("deepqsm-cli");
  const Run top = run(dir, "--help");
  REQUIRE(top.exited());
  CHECK(top.code() == 0);
  CHECK_THAT(top.out, Contains("train") && Contains("ppm") && Contains("config"));

  const Run train = run(dir, "train --help");
  REQUIRE(train.exited());
  CHECK(train.code() == 0);
  CHECK_THAT(train.out, Contains("--config") && Contains("--steps"));

  const Run version = run(dir, "--version");
  REQUIRE(version.exited());
  CHECK(version.code() == 0);
  CHECK_THAT(version.out, StartsWith("deepqsm "));
}

TEST_CASE("export strips a checkpoint to weights that load identically", "[cli]") {
  TempDir dir("deepqsm-cli");
  const std::string cfg = std::string(DEEPQSM_SOURCE_DIR) + "/configs/test-tiny.json";
  const std::string run_dir = dir.file("run");
  Run t = run(dir, "train --config '" + cfg + "' --out '" + run_dir + "' --steps 3 --quiet");
  INFO("stderr: " << t.err);
  REQUIRE(t.code() == 0);

  // A run folder exports its newest checkpoint.
  const std::string model = dir.file("model.h5");
  Run e = run(dir, "export '" + run_dir + "' -o '" + model + "'");
  INFO("stderr: " << e.err);
  REQUIRE(e.code() == 0);
  CHECK_THAT(e.out, Contains("step 3"));
  const dq::CheckpointData full = dq::load_checkpoint(dq::newest_checkpoint(run_dir));
  const dq::CheckpointData slim = dq::load_checkpoint(model);
  CHECK_FALSE(slim.adam_m.defined());
  CHECK_FALSE(slim.adam_v.defined());
  CHECK(slim.step == 3);
  CHECK(slim.config_json == full.config_json);
  REQUIRE(slim.params.numel() == full.params.numel());
  CHECK(std::equal(slim.params.f32(), slim.params.f32() + slim.params.numel(), full.params.f32()));
  CHECK(fs::file_size(model) < fs::file_size(dq::newest_checkpoint(run_dir)) / 2);

  // Never onto one of its own sources (the run would lose its Adam state).
  const std::string newest = dq::newest_checkpoint(run_dir);
  check_one_line_failure(run(dir, "export '" + run_dir + "' -o '" + newest + "'"),
                         "the same file as");
  CHECK(dq::load_checkpoint(newest).adam_m.defined());
  // --resume with --steps at or below the checkpoint trains nothing and says so.
  const Run again =
      run(dir, "train --config '" + cfg + "' --out '" + run_dir + "' --steps 2 --resume --quiet");
  CHECK(again.code() == 0);
  CHECK_THAT(again.out, Contains("nothing trained: the checkpoint is already at step 3"));

  // A write that fails at the end (a folder where the file should go) leaves
  // no temporary file behind.
  fs::create_directory(dir.file("in_the_way.h5"));
  check_one_line_failure(
      run(dir, "export '" + run_dir + "' -o '" + dir.file("in_the_way.h5") + "'"), "in_the_way.h5");
  for (const auto& e : fs::directory_iterator(dir.path))
    CHECK(e.path().filename().string().find(std::string("in_the_way.h5") + dq::kTemporaryTag) == std::string::npos);

  // An empty folder and a non-checkpoint file are refused in one line.
  fs::create_directory(dir.file("empty"));
  check_one_line_failure(run(dir, "export '" + dir.file("empty") + "' -o '" + model + "'"),
                         "no checkpoint");
  const std::string junk = dir.write("junk.h5", "not hdf5");
  check_one_line_failure(run(dir, "export '" + junk + "' -o '" + dir.file("m2.h5") + "'"),
                         "junk.h5");
  CHECK_FALSE(fs::exists(dir.file("m2.h5")));
}

TEST_CASE("export --average writes the mean weights of a run's newest checkpoints", "[cli]") {
  TempDir dir("deepqsm-cli");
  const std::string cfg = std::string(DEEPQSM_SOURCE_DIR) + "/configs/test-tiny.json";
  const std::string run_dir = dir.file("run");
  // test-tiny checkpoints only at the end; a 4-step run with checkpoints
  // every step, all kept, leaves steps 1..4.
  std::string text = dq::test::slurp(cfg);
  const std::string key = "\"checkpoint_every\": 0";
  REQUIRE(text.find(key) != std::string::npos);
  text.replace(text.find(key), key.size(), "\"checkpoint_every\": 1, \"keep_checkpoints\": 10");
  const std::string cfg4 = dir.write("every-step.json", text);
  Run t = run(dir, "train --config '" + cfg4 + "' --out '" + run_dir + "' --steps 4 --quiet");
  INFO("stderr: " << t.err);
  REQUIRE(t.code() == 0);
  const std::vector<std::string> ckpts = dq::step_checkpoint_paths(run_dir);
  REQUIRE(ckpts.size() == 4);

  const std::string model = dir.file("swa.h5");
  Run e = run(dir, "export '" + run_dir + "' --average 3 -o '" + model + "'");
  INFO("stderr: " << e.err);
  REQUIRE(e.code() == 0);
  CHECK_THAT(e.out, Contains("3 checkpoints") && Contains("steps 2 to 4"));
  const dq::CheckpointData swa = dq::load_checkpoint(model);
  CHECK(swa.step == 4);
  std::vector<dq::CheckpointData> last;
  for (size_t i = 1; i < 4; ++i) last.push_back(dq::load_checkpoint(ckpts[i]));
  double max_err = 0;
  for (int64_t i = 0; i < swa.params.numel(); ++i) {
    const double mean = (double(last[0].params.f32()[i]) + last[1].params.f32()[i] +
                         last[2].params.f32()[i]) / 3.0;
    max_err = std::max(max_err, std::fabs(swa.params.f32()[i] - mean));
  }
  CHECK(max_err < 1e-6);

  // The same files named one by one give the same model.
  const std::string model2 = dir.file("swa2.h5");
  Run e2 = run(dir, "export '" + ckpts[3] + "' '" + ckpts[1] + "' '" + ckpts[2] + "' -o '" +
                        model2 + "'");
  REQUIRE(e2.code() == 0);
  const dq::CheckpointData swa2 = dq::load_checkpoint(model2);
  CHECK(swa2.step == 4);
  CHECK(std::equal(swa.params.f32(), swa.params.f32() + swa.params.numel(), swa2.params.f32()));

  // More than the folder holds, or --average without a folder: one line.
  check_one_line_failure(run(dir, "export '" + run_dir + "' --average 9 -o '" + model + "'"),
                         "holds only 4");
  check_one_line_failure(run(dir, "export '" + ckpts[0] + "' --average 2 -o '" + model + "'"),
                         "needs a run folder");
}

TEST_CASE("a disk that fills part-way leaves the earlier outputs as they were", "[cli]") {
  TempDir dir("deepqsm-cli");
  // An earlier run's files, which a failed run must neither replace nor mix
  // with its own.
  const std::string f = dir.file("f.nii.gz"), c = dir.file("c.nii"), m = dir.file("m.nii.gz");
  for (const std::string& p : {f, c, m}) dir.write(fs::path(p).filename(), "old");
  // At 32^3 the compressed field (~99 KB) fits under 115 KB and the
  // uncompressed chi (128 KB) does not: the second of three files fails.
  const Run ph = run_program(
      dir, DEEPQSM_BINARY, "phantom --size 32 -o '" + f + "' --chi '" + c + "' --mask '" + m + "'",
      file_size_limit(115 * 1024));
  check_one_line_failure(ph, "c.nii: could not write the file");
  CHECK(ph.out.empty());  // nothing claimed as written
  for (const std::string& p : {f, c, m}) CHECK(slurp(p) == "old");

  // synth: the volumes (~52 KB each, compressed) fit, the patch file outgrows
  // the limit after a few of them; no volume of this run appears.
  const std::string recipe = dir.write("recipe.json", R"({"volume_size": 24, "cubes": [2, 4],
      "spheres": [2, 4], "patch_size": 8, "patches_per_volume": 3})");
  const std::string vols = dir.file("vols"), out = dir.file("p.h5");
  fs::create_directory(vols);
  const std::string old_volume = dir.write("vols/chi_0000.nii.gz", "old");
  dir.write("p.h5", "old");
  const Run sy = run_program(dir, DEEPQSM_BINARY,
                             "synth --quiet --config '" + recipe + "' --volumes 20 --out '" + out +
                                 "' --volumes-out '" + vols + "'",
                             file_size_limit(75 * 1024));
  check_one_line_failure(sy, "p.h5");
  CHECK(slurp(out) == "old");
  CHECK(slurp(old_volume) == "old");
  int files = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir.path)) {
    CHECK(e.path().filename().string().find(dq::kTemporaryTag) == std::string::npos);
    files += e.is_regular_file();
  }
  CHECK(files == 8);  // f, c, m, recipe, vols/chi_0000, p.h5, stdout, stderr
}

TEST_CASE("outputs are checked before any work, and bad field voxels handled", "[cli]") {
  TempDir dir("deepqsm-cli");
  const std::string f = dir.file("f.nii"), m = dir.file("m.nii");
  REQUIRE(run(dir, "phantom --size 16 -o '" + f + "' --mask '" + m + "'").code() == 0);
  const std::string old_field = dq::test::slurp(f);

  // An output on an input's path, in a missing folder, or with a wrong name.
  check_one_line_failure(run(dir, "invert tkd '" + f + "' -o '" + f + "'"), "the same file as");
  CHECK(dq::test::slurp(f) == old_field);
  check_one_line_failure(run(dir, "invert tkd '" + f + "' -o nodir/c.nii"), "does not exist");
  check_one_line_failure(run(dir, "invert tkd '" + f + "' -o c.txt"), ".nii or .nii.gz");
  // phantom checks all three outputs before writing the first.
  const std::string pf = dir.file("pf.nii");
  check_one_line_failure(run(dir, "phantom --size 16 -o '" + pf + "' --mask nodir/m.nii"),
                         "--mask nodir/m.nii");
  CHECK_FALSE(fs::exists(pf));
  check_one_line_failure(run(dir, "eval '" + f + "' --ref '" + f +
                                      "' --hist-png h.png "
                                      "--hist-range 1e12"),
                         "--hist-range");

  // NaN voxels leave the mask with a warning; an infinite one is refused.
  dq::Volume v = dq::read_nifti(f);
  v.data[100] = std::numeric_limits<float>::quiet_NaN();
  const std::string nan_f = dir.file("nan.nii");
  dq::write_nifti(nan_f, v, v.data.data());
  const std::string chi = dir.file("chi.nii");
  const Run r = run(dir, "invert tkd '" + nan_f + "' -o '" + chi + "'");
  INFO(r.err);
  REQUIRE(r.code() == 0);
  CHECK_THAT(r.err, Contains("warning: 1 NaN voxels"));
  const dq::Volume c = dq::read_nifti(chi);
  CHECK(c.data[100] == 0.0f);
  CHECK(std::all_of(c.data.begin(), c.data.end(), [](float x) { return std::isfinite(x); }));
  check_one_line_failure(run(dir, "eval '" + nan_f + "' --ref '" + f + "'"), "NaN or infinite");
  v.data[100] = std::numeric_limits<float>::infinity();
  const std::string inf_f = dir.file("inf.nii");
  dq::write_nifti(inf_f, v, v.data.data());
  check_one_line_failure(run(dir, "invert tkd '" + inf_f + "' -o '" + chi + "'"), "infinite");
  check_one_line_failure(run(dir, "invert tkd '" + f + "' -o '" + chi + "' --b0-direction inf 0 1"),
                         "B0 direction");
  // Parameters that overflow float: refused, not a NaN map with exit 0.
  fs::remove(chi);
  check_one_line_failure(run(dir, "invert tv '" + f + "' -o '" + chi + "' --rho 1e39"),
                         "nothing written");
  CHECK_FALSE(fs::exists(chi));
  // Labels must be whole numbers, checked before any picture is drawn.
  dq::Volume lab = dq::read_nifti(f);
  for (float& x : lab.data) x = 1.4f;
  const std::string lab_f = dir.file("lab.nii");
  dq::write_nifti(lab_f, lab, lab.data.data());
  check_one_line_failure(
      run(dir, "eval '" + f + "' --ref '" + f + "' --labels '" + lab_f + "' --diff-png d.png"),
      "whole numbers");
  CHECK_FALSE(fs::exists(dir.file("d.png")));
  // A whole number too long for a double is too large, not a crash.
  // Whole numbers are decimal: CLI11 alone read "0200" as octal 128.
  const Run octal = run(dir, "phantom --size 0020 -o '" + dir.file("p20.nii") + "'");
  REQUIRE(octal.code() == 0);
  CHECK(dq::read_nifti(dir.file("p20.nii")).nx == 20);
  const Run big = run(dir, "phantom -o p.nii --size " + std::string(320, '9'));
  REQUIRE(big.exited());  // it aborted on stod's out_of_range
  CHECK(big.code() != 0);
  CHECK_THAT(big.err, Contains("too large"));
}
