// `deepqsm train` and `deepqsm config {check,show}`: options wired to
// train/config.cpp (parsing, validation) and train/trainer.cpp (the loop).
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>

#include "core/cli_checks.h"
#include "core/error.h"
#include "cuda/device.h"
#include "train/cli/commands.h"
#include "train/comm.h"
#include "train/config.h"
#include "train/trainer.h"

namespace dq {

namespace {

constexpr const char* kDefaultSource = "<embedded default (configs/smoke-cpu.json)>";

TrainConfig load_or_default(const std::string& path, bool announce) {
  if (!path.empty()) return load_train_config(path);
  if (announce)
    std::cerr << "deepqsm: no --config given; using the embedded default "
                 "(configs/smoke-cpu.json, print it with `deepqsm config show`)\n";
  return parse_train_config(default_train_config_json(), kDefaultSource);
}

std::string summary(const TrainConfig& c) {
  const Recipe& r = c.data;
  std::ostringstream os;
  os << c.name << ": U-Net depth " << c.model.depth << ", " << c.model.base_filters
     << " base filters, dropout " << c.model.dropout << (c.model.residual ? ", residual" : "")
     << "; "
     << (c.train_volumes == 0 ? std::string("fresh training")
                              : std::to_string(c.train_volumes) + " training")
     << " + " << c.val_volumes << " held-out volumes of " << r.volume_size << "^3 voxels with "
     << r.cubes_min << "-" << r.cubes_max << " cubes and " << r.spheres_min << "-" << r.spheres_max
     << " spheres, " << r.patches_per_volume << " patches of " << r.patch_size << "^3 each; "
     << c.steps << " steps of batch " << c.batch << " on " << c.device << " (" << c.precision
     << "), lr " << c.optim.lr;
  return os.str();
}

struct TrainArgs {
  std::string config_path, out, device;
  int64_t steps = 0;
  int gpus = 0;
  bool resume = false, print_config = false, quiet = false;
};

int run_train(const TrainArgs& a) {
  TrainConfig cfg = load_or_default(a.config_path, !a.print_config && !std::getenv(kRankEnv));
  TrainOptions opt;
  opt.quiet = a.quiet;
  opt.resume = a.resume;
  // Overrides go into the config itself, so --print-config and the copy
  // stored in checkpoints show what actually ran; TrainOptions carries the
  // same values for run_training's own bookkeeping.
  if (a.steps > 0) cfg.steps = opt.steps_override = a.steps;
  if (!a.out.empty()) cfg.out_dir = opt.out_dir = a.out;
  if (!a.device.empty()) cfg.device = a.device;
  if (a.gpus > 0) {
    if (!a.device.empty() && a.device != "gpu")
      fail("--gpus ", a.gpus, " with --device ", a.device,
           ": --gpus starts one GPU rank per device; on the CPU use mpirun -np N");
    cfg.device = "gpu";
  }
  if (a.print_config) {
    std::cout << train_config_to_json(cfg);
    return 0;
  }
  // The parent of --gpus N trains nothing itself: it starts N copies of this
  // command (each sees kRankEnv and goes straight to training) and waits.
  if (a.gpus > 0 && !std::getenv(kRankEnv)) {
    if (launched_by_mpi())
      fail("--gpus: this process was started by an MPI launcher, which already starts one "
           "rank per process; drop --gpus");
    // Checked once here: each rank would otherwise fail on its own, one line each.
    const int have = cuda_device_count();
    if (have < a.gpus)
      fail("--gpus ", a.gpus, ": this node has ", have, " usable CUDA device",
           have == 1 ? "" : "s", have == 0 ? std::string(" (") + cuda_no_device_reason() + ")" : "");
    return spawn_local_ranks(a.gpus);
  }
  const TrainResult res = run_training(cfg, opt);
  // Stopped by a signal: the checkpoint of the last step is written; the
  // exit status says the run is unfinished, as the shell's 128 + signal.
  if (res.stop_signal != 0) {
    if (res.rank == 0)
      std::fprintf(stderr,
                   "deepqsm: stopped by signal %d after step %lld; checkpoint %s; continue "
                   "with --resume\n",
                   res.stop_signal, static_cast<long long>(res.steps), res.checkpoint.c_str());
    return 128 + res.stop_signal;
  }
  if (res.rank != 0) return 0;
  if (res.steps <= res.resumed_from) {
    // --resume with --steps at or below the checkpoint's step: no numbers
    // were measured, so none are printed (they read 0 before).
    std::printf("nothing trained: the checkpoint is already at step %lld\ncheckpoint: %s\n",
                static_cast<long long>(res.resumed_from), res.checkpoint.c_str());
    return 0;
  }
  std::printf("trained %lld steps; final training loss %.4e ppm^2\n",
              static_cast<long long>(res.steps), res.final_loss);
  std::printf("held-out MSE %.4e ppm^2 (TKD %.4e, predicting zero %.4e)\n", res.val_mse,
              res.tkd_val_mse, res.zero_val_mse);
  std::printf("checkpoint: %s\n", res.checkpoint.c_str());
  return 0;
}

}  // namespace

Command add_train_command(CLI::App& app) {
  auto o = std::make_shared<TrainArgs>();
  CLI::App* train = app.add_subcommand(
      "train", "Train on synthetic (field, chi) patches; validate against TKD; write checkpoints.");
  train->footer(
      "Losses are MSE in ppm^2. Progress lines go to stdout; checkpoints, log.jsonl and\n"
      "TensorBoard events to the output directory (train.out_dir). The last lines summarise\n"
      "the run: steps, final training loss, held-out MSE of the network and of TKD, and the\n"
      "checkpoint path.\n"
      "Data parallel: `mpirun -np N deepqsm train ...` (CPU or GPU ranks) or\n"
      "`deepqsm train --gpus N` (one node); train.batch is the global batch.");
  train
      ->add_option("--config", o->config_path,
                   "JSON config file (docs/config.md).\nDefault: the embedded quick CPU "
                   "demo, identical to\nconfigs/smoke-cpu.json")
      ->type_name("FILE");
  train
      ->add_option("--steps", o->steps,
                   "Number of Adam steps (one batch each); overrides\ntrain.steps. Default: "
                   "the config's value")
      ->type_name("N")
      ->transform(cli::positive_int());
  train
      ->add_option("--out", o->out,
                   "Output directory for checkpoints and logs; overrides\ntrain.out_dir. "
                   "Default: the config's value")
      ->type_name("DIR");
  train
      ->add_option("--device", o->device,
                   "Where to train; overrides train.device.\nDefault: the config's value")
      ->type_name("DEVICE")
      ->check(CLI::IsMember({"cpu", "gpu"}));
  train
      ->add_option("--gpus", o->gpus,
                   "Train on N GPUs of this node: starts one process per GPU\n(NCCL, no MPI "
                   "needed) and splits train.batch over them.\nUnder mpirun/srun leave it out: "
                   "each launched process\nis one rank")
      ->type_name("N")
      ->transform(cli::int_range(1, 1024));
  train->add_flag("--resume", o->resume,
                  "Continue from the newest checkpoint in the output\ndirectory; the result is "
                  "bit-identical to a run that\nwas never interrupted");
  train->add_flag("--print-config", o->print_config,
                  "Print the effective config (file, defaults and\noverrides) as JSON and exit");
  train->add_flag("--quiet", o->quiet, "No progress lines; only the final summary");

  return {train, [o] {
            return run_train(*o);
          }};
}

Command add_config_command(CLI::App& app) {
  auto paths = std::make_shared<std::pair<std::string, std::string>>();  // check, show
  CLI::App* config = app.add_subcommand("config", "Inspect configs without training.");
  config->require_subcommand(1);
  CLI::App* check = config->add_subcommand(
      "check", "Validate a config and print \"ok: <summary>\"; errors name the key at fault.");
  check->add_option("FILE", paths->first, "JSON config file")->required();
  CLI::App* show = config->add_subcommand(
      "show", "Print the effective config as JSON with every default filled in.");
  show->footer(
      "Without FILE, prints the embedded default that `deepqsm train` uses without\n--config.");
  show->add_option("FILE", paths->second, "JSON config file");

  return {config, [paths, check] {
            if (*check) {
              const TrainConfig cfg = load_train_config(paths->first);
              try {
                check_device_precision(cfg);
              } catch (const Error& e) {
                fail(paths->first, ": ", e.what());
              }
              std::cout << "ok: " << paths->first << ": " << summary(cfg) << "\n";
              return 0;
            }
            std::cout << train_config_to_json(load_or_default(paths->second, false));
            return 0;
          }};
}

}  // namespace dq
