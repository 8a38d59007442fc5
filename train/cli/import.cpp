// `deepqsm import --onnx`: a U-Net of our architecture from an ONNX file
// (written by `deepqsm export --onnx` or by torch.onnx.export of the same
// layers) into a model file deepqsm-infer loads (--model). The ONNX graph
// decides the architecture; the training config comes from the file's
// deepqsm.recipe metadata when it has one (our own exports), else it is the
// default config with that architecture, so D(k = 0) and the rest are the
// defaults a foreign model is assumed to have been trained with.
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "core/error.h"
#include "core/io/nifti_io.h"
#include "core/nn/checkpoint.h"
#include "core/nn/unet.h"
#include "core/onnx/unet_onnx.h"
#include "train/cli/commands.h"
#include "train/config.h"

namespace dq {

namespace {

struct ImportArgs {
  std::string onnx;
  std::string output;
};

// The stored recipe when it parses as a training config of the same
// architecture; otherwise the defaults with the graph's architecture.
std::string import_config(const OnnxUNet& m, const std::string& path, bool* from_file) {
  *from_file = false;
  for (const auto& kv : m.metadata) {
    if (kv.first != "deepqsm.recipe") continue;
    TrainConfig cfg = parse_train_config(kv.second, path + " (metadata deepqsm.recipe)");
    if (!same_architecture(cfg.model, m.model))
      fail(path, ": its deepqsm.recipe describes a U-Net of ", describe_architecture(cfg.model),
           " but the graph is one of ", describe_architecture(m.model));
    *from_file = true;
    return kv.second;
  }
  TrainConfig cfg = parse_train_config(default_train_config_json(), "the default config");
  cfg.model = m.model;
  return train_config_to_json(cfg);
}

int run_import(const ImportArgs& a) {
  check_output_file(a.output, "-o", {a.onnx});
  OnnxUNet m = read_unet_onnx(a.onnx);
  bool from_file = false;
  const std::string config = import_config(m, a.onnx, &from_file);
  UNet net(m.model);
  save_checkpoint(a.output, net, m.params, nullptr, nullptr, /*step=*/0, config);
  CheckpointData back = load_checkpoint(a.output, true);
  if (params_checksum(net, back.params) != params_checksum(net, m.params))
    fail(a.output, ": the written weights do not read back identically");
  std::printf("imported %s (U-Net %s, %lld parameters; config %s) to %s\n", a.onnx.c_str(),
              describe_architecture(m.model).c_str(), static_cast<long long>(net.layout().count()),
              from_file ? "from its deepqsm.recipe" : "the defaults", a.output.c_str());
  return 0;
}

}  // namespace

Command add_import_command(CLI::App& app) {
  auto a = std::make_shared<ImportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "import", "Read a U-Net of deepqsm's architecture from ONNX into a model file.");
  cmd->add_option("--onnx", a->onnx, "the ONNX file (deepqsm export --onnx, or torch.onnx.export)")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("-o,--out", a->output, "the model file to write (HDF5; written atomically)")
      ->required();
  cmd->footer(
      "The graph must be deepqsm's U-Net (docs/onnx.md): Conv/Relu pairs, MaxPool,\n"
      "ConvTranspose + Relu, Concat [upsampled, skip], the head Conv and an optional\n"
      "residual Add. Any other graph is refused, naming the first node that does not fit.\n"
      "\n"
      "Example:\n"
      "  deepqsm import --onnx unet.onnx -o models/imported.h5\n"
      "  deepqsm-infer field.nii.gz -o chi.nii.gz --model models/imported.h5");
  return {cmd, [a]() { return run_import(*a); }};
}

}  // namespace dq
