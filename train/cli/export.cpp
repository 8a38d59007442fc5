// `deepqsm export`: a training checkpoint (weights, Adam moments, training
// state) reduced to the weights deepqsm-infer needs, a third of the size.
// The model file is a checkpoint of the same format without the moments, so
// it stays loadable by everything that loads checkpoints; it keeps the
// step and the training config, so the recipe travels with the weights.
// With --onnx the same weights also go out as an ONNX graph (core/onnx/) for
// the QSM tools that run networks through ONNX Runtime.
#include <sys/stat.h>

#include <algorithm>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/io/nifti_io.h"
#include "core/nn/checkpoint.h"
#include "core/nn/unet.h"
#include "core/onnx/unet_onnx.h"
#include "train/cli/commands.h"
#include "train/trainer.h"

namespace dq {

namespace {

struct ExportArgs {
  std::vector<std::string> inputs;
  std::string output;
  std::string onnx;
  int average = 1;
};

bool is_directory(const std::string& path) {
  struct stat st {};
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// The checkpoint files the arguments name: files as given; a run folder
// gives its newest checkpoint, or its newest `average` ones.
std::vector<std::string> sources(const ExportArgs& a) {
  if (a.average < 1) fail("--average ", a.average, ": must be at least 1");
  std::vector<std::string> files;
  for (const std::string& in : a.inputs) {
    if (!is_directory(in)) {
      files.push_back(in);
      continue;
    }
    std::vector<std::string> all = step_checkpoint_paths(in);
    if (all.empty()) {
      const std::string newest = newest_checkpoint(in);
      if (newest.empty()) fail(in, " holds no checkpoint-<step>.h5 to export");
      all.push_back(newest);
    }
    if (static_cast<int64_t>(all.size()) < a.average)
      fail("--average ", a.average, ": ", in, " holds only ", all.size(), " checkpoint-<step>.h5 files");
    files.insert(files.end(), all.end() - a.average, all.end());
  }
  if (a.average > 1 && std::none_of(a.inputs.begin(), a.inputs.end(), is_directory))
    fail("--average needs a run folder; to average files, name them all");
  return files;
}

// "x y z" of a data.<key> triple of the training config, or the fallback.
std::string config_triple(const nlohmann::json& data, const char* key, const char* fallback) {
  const auto it = data.is_object() ? data.find(key) : data.end();
  if (it == data.end() || !it->is_array() || it->size() != 3) return fallback;
  std::ostringstream s;
  for (size_t i = 0; i < 3; ++i) {
    if (!(*it)[i].is_number()) return fallback;
    s << (i ? " " : "") << (*it)[i].get<double>();
  }
  return s.str();
}

// What a pipeline needs to feed the ONNX graph correctly, as metadata_props
// (docs/onnx.md): the recipe (the whole training config), the B0 direction
// and voxel size of the training data, the side multiple and D(k = 0).
OnnxMetadata onnx_metadata(const CheckpointData& ck, const UNet& net) {
  const nlohmann::json cfg = nlohmann::json::parse(ck.config_json, nullptr, false);
  const nlohmann::json data =
      cfg.is_object() && cfg.contains("data") ? cfg["data"] : nlohmann::json::object();
  std::string k0 = nlohmann::json(1.0 / 3.0).dump();  // every config's default
  if (data.is_object() && data.contains("dipole_k0") && data["dipole_k0"].is_number())
    k0 = data["dipole_k0"].dump();
  return {{"deepqsm.recipe", ck.config_json},
          {"deepqsm.architecture", describe_architecture(ck.model)},
          {"deepqsm.step", std::to_string(ck.step)},
          {"deepqsm.units", "ppm"},
          {"deepqsm.axes", "[1, 1, D, H, W] = [1, 1, z, y, x] of the NIfTI volume (x fastest)"},
          {"deepqsm.b0_direction", config_triple(data, "b0_dir", "0 0 1")},
          {"deepqsm.voxel_size_mm", config_triple(data, "voxel_mm", "1 1 1")},
          {"deepqsm.side_multiple", std::to_string(net.side_multiple())},
          {"deepqsm.dipole_k0", k0}};
}

int run_export(const ExportArgs& a) {
  const std::vector<std::string> files = sources(a);
  if (a.output.empty() && a.onnx.empty()) fail("export: give -o MODEL.h5, --onnx MODEL.onnx or both");
  if (!a.output.empty() && a.output == a.onnx) fail("-o and --onnx name the same file ", a.output);
  // Never over one of its own sources (a run's checkpoint, which would lose
  // its optimiser state), nor into a missing folder.
  if (!a.output.empty()) check_output_file(a.output, "-o", files);
  if (!a.onnx.empty()) check_output_file(a.onnx, "--onnx", files);
  // The newest (highest step) source gives the step, config and state; the
  // weights are the mean of all sources' weights (stochastic weight
  // averaging when they are checkpoints along one run), summed in double.
  CheckpointData ck = load_checkpoint(files.front(), /*weights_only=*/true);
  std::string newest = files.front();
  int64_t first_step = ck.step;
  std::vector<double> sum(static_cast<size_t>(ck.params.numel()));
  for (int64_t i = 0; i < ck.params.numel(); ++i) sum[static_cast<size_t>(i)] = ck.params.f32()[i];
  for (size_t f = 1; f < files.size(); ++f) {
    CheckpointData other = load_checkpoint(files[f], true);
    if (!same_architecture(other.model, ck.model) || other.params.numel() != ck.params.numel())
      fail(files[f], " holds a U-Net of ", describe_architecture(other.model), "; ",
           files.front(), " one of ", describe_architecture(ck.model),
           ": only one architecture can be averaged");
    for (int64_t i = 0; i < other.params.numel(); ++i)
      sum[static_cast<size_t>(i)] += other.params.f32()[i];
    first_step = std::min(first_step, other.step);
    if (other.step > ck.step) {
      Tensor keep = std::move(ck.params);
      ck = std::move(other);
      ck.params = std::move(keep);
      newest = files[f];
    }
  }
  if (files.size() > 1) {
    const double inv = 1.0 / static_cast<double>(files.size());
    for (int64_t i = 0; i < ck.params.numel(); ++i)
      ck.params.f32()[i] = static_cast<float>(sum[static_cast<size_t>(i)] * inv);
  }
  UNet net(ck.model);
  if (!a.output.empty()) {
    save_checkpoint(a.output, net, ck.params, nullptr, nullptr, ck.step, ck.config_json, ck.state);
    // Read back what was written: a model that does not load is worse than none.
    CheckpointData back = load_checkpoint(a.output, true);
    if (params_checksum(net, back.params) != params_checksum(net, ck.params))
      fail(a.output, ": the written weights do not read back identically");
    if (files.size() == 1) {
      std::printf("exported %s (step %lld, U-Net depth %d, base %d, %lld parameters) to %s\n",
                  newest.c_str(), static_cast<long long>(ck.step), ck.model.depth,
                  ck.model.base_filters, static_cast<long long>(net.layout().total()),
                  a.output.c_str());
    } else {
      std::printf(
          "exported the mean weights of %zu checkpoints (steps %lld to %lld; U-Net depth %d, base "
          "%d, %lld parameters) to %s, stamped with step %lld\n",
          files.size(), static_cast<long long>(first_step), static_cast<long long>(ck.step),
          ck.model.depth, ck.model.base_filters, static_cast<long long>(net.layout().total()),
          a.output.c_str(), static_cast<long long>(ck.step));
    }
  }
  if (!a.onnx.empty()) {
    write_unet_onnx(a.onnx, ck.model, ck.params, onnx_metadata(ck, net));
    std::printf("wrote %s (ONNX opset %d, input 'field' and output 'chi' float32 [1, 1, D, H, W] "
                "in ppm, sides multiples of %lld)\n",
                a.onnx.c_str(), kOnnxOpset, static_cast<long long>(net.side_multiple()));
  }
  return 0;
}

}  // namespace

Command add_export_command(CLI::App& app) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* cmd = app.add_subcommand(
      "export",
      "Strip a training checkpoint to the weights deepqsm-infer loads (--model), or write it as "
      "ONNX.");
  cmd->add_option("checkpoint", a->inputs,
                  "a checkpoint-<step>.h5 or a run folder (its newest checkpoint); several "
                  "files are averaged")
      ->required();
  cmd->add_option("-o,--out", a->output, "the model file to write (HDF5; written atomically)");
  cmd->add_option("--onnx", a->onnx,
                  "also (or only) write the network as an ONNX graph (opset 17; docs/onnx.md)");
  cmd->add_option("--average", a->average,
                  "with a run folder: average the weights of its newest K checkpoints "
                  "(stochastic weight averaging; keep_checkpoints must have kept them)")
      ->default_val(1);
  cmd->footer(
      "Averaging the weights of checkpoints along one run (stochastic weight averaging,\n"
      "Izmailov et al. 2018) gives a model in a flatter region of the loss than any one\n"
      "of them, which often generalises better; the model keeps the newest step's config.\n"
      "\n"
      "Examples:\n"
      "  deepqsm export runs/deepqsm-paper -o models/deepqsm-paper.h5\n"
      "  deepqsm export runs/deepqsm-paper --average 8 -o models/deepqsm-paper-swa.h5\n"
      "  deepqsm-infer field.nii.gz -o chi.nii.gz --model models/deepqsm-paper.h5\n"
      "  deepqsm export models/deepqsm-default.h5 --onnx deepqsm.onnx");
  return {cmd, [a]() { return run_export(*a); }};
}

}  // namespace dq
