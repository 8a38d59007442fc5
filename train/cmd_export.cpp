// `deepqsm export`: a training checkpoint (weights, Adam moments, training
// state) reduced to the weights deepqsm-infer needs, a third of the size.
// The model file is a checkpoint of the same format without the moments, so
// it stays loadable by everything that loads checkpoints; it keeps the
// step and the training config, so the recipe travels with the weights.
#include <cstdio>
#include <memory>
#include <string>
#include <sys/stat.h>

#include "core/checkpoint.h"
#include "core/error.h"
#include "core/unet.h"
#include "train/commands.h"
#include "train/trainer.h"

namespace dq {

namespace {

struct ExportArgs {
  std::string input, output;
};

bool is_directory(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

int run_export(const ExportArgs& a) {
  std::string src = a.input;
  if (is_directory(src)) {
    const std::string newest = newest_checkpoint(src);
    if (newest.empty()) fail(src, " holds no checkpoint-<step>.h5 to export");
    src = newest;
  }
  CheckpointData ck = load_checkpoint(src, /*weights_only=*/true);
  UNet net(ck.model);
  save_checkpoint(a.output, net, ck.params, nullptr, nullptr, ck.step, ck.config_json, ck.state);
  // Read back what was written: a model that does not load is worse than none.
  CheckpointData back = load_checkpoint(a.output, true);
  if (params_checksum(net, back.params) != params_checksum(net, ck.params))
    fail(a.output, ": the written weights do not read back identically");
  std::printf("exported %s (step %lld, U-Net depth %d, base %d, %lld parameters) to %s\n",
              src.c_str(), static_cast<long long>(ck.step), ck.model.depth,
              ck.model.base_filters, static_cast<long long>(net.layout().total()),
              a.output.c_str());
  return 0;
}

}  // namespace

Command add_export_command(CLI::App& app) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "export", "Strip a training checkpoint to the weights deepqsm-infer loads (--model).");
  cmd->add_option("checkpoint", a->input,
                  "a checkpoint-<step>.h5, or a run folder (its newest checkpoint)")
      ->required();
  cmd->add_option("-o,--out", a->output, "the model file to write (HDF5; written atomically)")
      ->required();
  cmd->footer(
      "Example:\n"
      "  deepqsm export runs/deepqsm-paper -o models/deepqsm-paper.h5\n"
      "  deepqsm-infer field.nii.gz -o chi.nii.gz --model models/deepqsm-paper.h5");
  return {cmd, [a]() { return run_export(*a); }};
}

}  // namespace dq
