// The `deepqsm` command line: `train` and `config {check,show}`. Parsing and
// validation live in train/config.cpp and the loop in train/trainer.cpp; this
// file only wires options to them and turns every failure into one line,
// "deepqsm: <message>", on stderr with exit status 1.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <exception>
#include <iostream>
#include <sstream>
#include <string>

#include "core/error.h"
#include "train/config.h"
#include "train/trainer.h"

namespace {

// Must match project(deepqsm VERSION ...) in CMakeLists.txt.
constexpr const char* kVersion = "0.1.0";
constexpr const char* kDefaultSource = "<embedded default (configs/smoke-cpu.json)>";

constexpr const char* kAbout =
    "deepqsm trains DeepQSM (Bollmann et al., NeuroImage 2019), a 3D U-Net that\n"
    "inverts the dipole convolution of quantitative susceptibility mapping: it maps\n"
    "a local field map to magnetic susceptibility (chi), both in ppm. It learns from\n"
    "purely synthetic data: random cubes and spheres of chi in [-0.2, 0.2] ppm are\n"
    "convolved with the dipole kernel (B0 along z by default) and random patches of\n"
    "(field, chi) pairs are streamed to Adam on an MSE loss. A run is described by a\n"
    "JSON config (docs/config.md lists every key); `deepqsm train` runs one,\n"
    "`deepqsm config check FILE` validates one and `deepqsm config show` prints one\n"
    "with every default filled in.";

// Messages are one line by contract (core/error.h); exceptions from libraries
// may not be, and a second line would break scripts that read stderr.
std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// A CLI11 usage error, in the same one-line shape as every other failure.
std::string usage_failure(const CLI::App*, const CLI::Error& e) {
  return "deepqsm: " + one_line(e.what()) + " (see deepqsm --help)\n";
}

dq::TrainConfig load_or_default(const std::string& path, bool announce) {
  if (!path.empty()) return dq::load_train_config(path);
  if (announce)
    std::cerr << "deepqsm: no --config given; using the embedded default "
                 "(configs/smoke-cpu.json, print it with `deepqsm config show`)\n";
  return dq::parse_train_config(dq::default_train_config_json(), kDefaultSource);
}

std::string summary(const dq::TrainConfig& c) {
  const dq::Recipe& r = c.data;
  std::ostringstream os;
  os << c.name << ": U-Net depth " << c.model.depth << ", " << c.model.base_filters
     << " base filters, dropout " << c.model.dropout << (c.model.residual ? ", residual" : "")
     << "; " << c.train_volumes << " training + " << c.val_volumes << " held-out volumes of "
     << r.volume_size << "^3 voxels with " << r.cubes_min << "-" << r.cubes_max << " cubes and "
     << r.spheres_min << "-" << r.spheres_max << " spheres, " << r.patches_per_volume
     << " patches of " << r.patch_size << "^3 each; " << c.steps << " steps of batch " << c.batch
     << " on " << c.device << " (" << c.precision << "), lr " << c.optim.lr;
  return os.str();
}

int run_train(const std::string& config_path, int64_t steps, const std::string& out,
              const std::string& device, bool print_config, bool quiet) {
  dq::TrainConfig cfg = load_or_default(config_path, !print_config);
  dq::TrainOptions opt;
  opt.quiet = quiet;
  // Overrides go into the config itself, so --print-config and the copy
  // stored in checkpoints show what actually ran; TrainOptions carries the
  // same values for run_training's own bookkeeping.
  if (steps > 0) cfg.steps = opt.steps_override = steps;
  if (!out.empty()) cfg.out_dir = opt.out_dir = out;
  if (!device.empty()) cfg.device = device;
  if (print_config) {
    std::cout << dq::train_config_to_json(cfg);
    return 0;
  }
  const dq::TrainResult res = dq::run_training(cfg, opt);
  std::printf("trained %lld steps; final training loss %.4e ppm^2\n",
              static_cast<long long>(res.steps), res.final_loss);
  std::printf("held-out MSE %.4e ppm^2 (TKD %.4e ppm^2)\n", res.val_mse, res.tkd_val_mse);
  std::printf("checkpoint: %s\n", res.checkpoint.c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{kAbout, "deepqsm"};
  app.set_version_flag("--version", std::string("deepqsm ") + kVersion);
  app.require_subcommand(1);
  app.failure_message(usage_failure);
  std::string config_path, out, device;
  int64_t steps = 0;
  bool print_config = false, quiet = false;
  CLI::App* train = app.add_subcommand(
      "train", "Train on synthetic (field, chi) patches; validate against TKD; write checkpoints.");
  train->footer(
      "Losses are MSE in ppm^2. Progress lines and checkpoints go to the output directory\n"
      "(train.out_dir); the last lines summarise the run: steps, final training loss,\n"
      "held-out MSE of the network and of TKD, and the checkpoint path.");
  train
      ->add_option("--config", config_path,
                   "JSON config file (docs/config.md).\nDefault: the embedded quick CPU "
                   "demo, identical to\nconfigs/smoke-cpu.json")
      ->type_name("FILE");
  train
      ->add_option("--steps", steps,
                   "Number of Adam steps (one batch each); overrides\ntrain.steps. Default: "
                   "the config's value")
      ->type_name("N")
      ->check(CLI::PositiveNumber);
  train
      ->add_option("--out", out,
                   "Output directory for checkpoints and logs; overrides\ntrain.out_dir. "
                   "Default: the config's value")
      ->type_name("DIR");
  train
      ->add_option("--device", device,
                   "Where to train; overrides train.device.\nDefault: the config's value")
      ->type_name("DEVICE")
      ->check(CLI::IsMember({"cpu", "gpu"}));
  train->add_flag("--print-config", print_config,
                  "Print the effective config (file, defaults and\noverrides) as JSON and exit");
  train->add_flag("--quiet", quiet, "No progress lines; only the final summary");

  std::string check_path, show_path;
  CLI::App* config = app.add_subcommand("config", "Inspect configs without training.");
  config->require_subcommand(1);
  CLI::App* check = config->add_subcommand(
      "check", "Validate a config and print \"ok: <summary>\"; errors name the key at fault.");
  check->add_option("FILE", check_path, "JSON config file")->required();
  CLI::App* show = config->add_subcommand(
      "show", "Print the effective config as JSON with every default filled in.");
  show->footer(
      "Without FILE, prints the embedded default that `deepqsm train` uses without\n--config.");
  show->add_option("FILE", show_path, "JSON config file");

  app.footer(
      "Examples:\n"
      "  deepqsm train                                  # the quick CPU demo\n"
      "  deepqsm train --config configs/deepqsm-paper.json --out runs/paper\n"
      "  deepqsm config check my.json");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    if (*train) return run_train(config_path, steps, out, device, print_config, quiet);
    if (*check) {
      const dq::TrainConfig cfg = dq::load_train_config(check_path);
      std::cout << "ok: " << check_path << ": " << summary(cfg) << "\n";
      return 0;
    }
    if (*show) {
      std::cout << dq::train_config_to_json(load_or_default(show_path, false));
      return 0;
    }
  } catch (const std::exception& e) {
    // dq::Error derives from std::exception; both end here with one line.
    std::cerr << "deepqsm: " << one_line(e.what()) << "\n";
    return 1;
  }
  return 0;
}
