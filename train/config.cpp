// JSON <-> TrainConfig. The layout has five sections (name, model, data,
// optim, train); docs/config.md lists every key. Parsing is strict on
// purpose: a misspelt key silently falling back to its default would train
// the wrong model for hours, so unknown keys, wrong types and out-of-range
// values are all refused with the key's full path.
#include "train/config.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/io/json_read.h"
#include "synth/recipe_json.h"

namespace dq {
namespace {

// Every key the parser accepts, by section ("" is the top level). The
// unknown-key message searches this table for a suggestion, so it must list
// exactly what the parse_* functions read below.
const KeyTable& known_keys() {
  static const KeyTable keys = [] {
    std::vector<std::string> data = recipe_keys();
    data.insert(data.end(),
                {"source", "patch_file", "refresh_every", "train_volumes", "val_volumes"});
    return KeyTable{
        {"", {"name", "model", "data", "optim", "train"}},
        {"model", {"depth", "base_filters", "dropout", "residual", "head_kernel"}},
        {"data", data},
        {"optim",
         {"lr", "beta1", "beta2", "eps", "schedule", "lr_min", "warmup_steps", "decay_steps"}},
        {"train",
         {"steps", "batch", "device", "precision", "loss_scale", "loss_scale_init",
          "loss_scale_growth_interval", "allreduce_overlap", "allreduce_bucket_kb", "autotune",
          "checkpoint_every", "keep_checkpoints", "validate_every", "log_every", "seed", "init_from",
          "out_dir", "log_file", "tensorboard", "reference_field", "reference_chi", "reference_mask"}},
    };
  }();
  return keys;
}

void parse_model(const json& obj, UNetConfig& m) {
  for_each_key(obj, "model", known_keys(),
               [&](const std::string& key, const json& v, const std::string& path) {
                 if (key == "depth") {
                   m.depth = read_int32(v, path);
                   check(m.depth >= kMinDepth && m.depth <= kMaxDepth, path, "in 2..6",
                         std::to_string(m.depth));
                 } else if (key == "base_filters") {
                   m.base_filters = read_int32(v, path);
                   // The deepest level has base_filters * 2^(depth-1) channels; 1024 keeps
                   // that far from int overflow and far beyond any useful width.
                   check(m.base_filters >= 1 && m.base_filters <= kMaxBaseFilters, path, "in 1..1024",
                         std::to_string(m.base_filters));
                 } else if (key == "dropout") {
                   m.dropout = read_float(v, path);
                   check(m.dropout >= 0 && m.dropout < 1, path, "in [0, 1)", num(m.dropout));
                 } else if (key == "residual") {
                   m.residual = read_bool(v, path);
                 } else if (key == "head_kernel") {
                   m.head_kernel = read_int32(v, path);
                   check(m.head_kernel == 1 || m.head_kernel == 3, path, "1 or 3",
                         std::to_string(m.head_kernel));
                 }
               });
}

void parse_data(const json& obj, TrainConfig& cfg) {
  for_each_key(obj, "data", known_keys(),
               [&](const std::string& key, const json& v, const std::string& path) {
                 if (read_recipe_key(cfg.data, key, v, path)) return;
                 if (key == "source") {
                   cfg.source = read_string(v, path);
                   check(
                       cfg.source == "generator" || cfg.source == "stream" || cfg.source == "hdf5",
                       path, "\"generator\", \"stream\" or \"hdf5\"", "\"" + cfg.source + "\"");
                 } else if (key == "patch_file") {
                   cfg.patch_file = read_string(v, path);
                 } else if (key == "refresh_every") {
                   cfg.refresh_every = read_int(v, path);
                   check(cfg.refresh_every >= 0, path, ">= 0 (0 = one fixed training set)",
                         std::to_string(cfg.refresh_every));
                 } else if (key == "train_volumes") {
                   cfg.train_volumes = read_int(v, path);
                   check(cfg.train_volumes >= 0, path,
                         ">= 1 (0: fresh volumes, data.source \"stream\" only)",
                         std::to_string(cfg.train_volumes));
                 } else if (key == "val_volumes") {
                   cfg.val_volumes = read_int(v, path);
                   check(cfg.val_volumes >= 1, path, ">= 1 (validation compares with TKD on them)",
                         std::to_string(cfg.val_volumes));
                 }
               });
}

void parse_optim(const json& obj, TrainConfig& cfg) {
  AdamConfig& o = cfg.optim;
  for_each_key(obj, "optim", known_keys(),
               [&](const std::string& key, const json& v, const std::string& path) {
                 if (key == "schedule") {
                   cfg.lr_schedule = read_string(v, path);
                   check(cfg.lr_schedule == "constant" || cfg.lr_schedule == "cosine", path,
                         "\"constant\" or \"cosine\"", "\"" + cfg.lr_schedule + "\"");
                   return;
                 }
                 if (key == "warmup_steps" || key == "decay_steps") {
                   int64_t& n = key == "warmup_steps" ? cfg.warmup_steps : cfg.decay_steps;
                   n = read_int(v, path);
                   check(n >= 0, path, ">= 0", std::to_string(n));
                   return;
                 }
                 const float x = read_float(v, path);
                 if (key == "lr") {
                   check(x > 0, path, "> 0", num(x));
                   o.lr = x;
                 } else if (key == "lr_min") {
                   check(x >= 0, path, ">= 0", num(x));
                   cfg.lr_min = x;
                 } else if (key == "beta1" || key == "beta2") {
                   check(x >= 0 && x < 1, path, "in [0, 1)", num(x));
                   (key == "beta1" ? o.beta1 : o.beta2) = x;
                 } else if (key == "eps") {
                   check(x > 0, path, "> 0", num(x));
                   o.eps = x;
                 }
               });
}

void parse_train(const json& obj, TrainConfig& cfg) {
  for_each_key(obj, "train", known_keys(),
               [&](const std::string& key, const json& v, const std::string& path) {
                 if (key == "steps") {
                   cfg.steps = read_int(v, path);
                   check(cfg.steps >= 1, path, ">= 1", std::to_string(cfg.steps));
                 } else if (key == "batch") {
                   cfg.batch = read_int(v, path);
                   check(cfg.batch >= 1, path, ">= 1", std::to_string(cfg.batch));
                 } else if (key == "device") {
                   cfg.device = read_string(v, path);
                   check(cfg.device == "cpu" || cfg.device == "gpu", path, "\"cpu\" or \"gpu\"",
                         "\"" + cfg.device + "\"");
                 } else if (key == "precision") {
                   cfg.precision = read_string(v, path);
                   const std::set<std::string> ok = {"fp32", "tf32", "bf16", "fp16"};
                   check(ok.count(cfg.precision) > 0, path, "one of fp32, tf32, bf16, fp16",
                         "\"" + cfg.precision + "\"");
                 } else if (key == "loss_scale") {
                   cfg.loss_scale = read_string(v, path);
                   const std::set<std::string> ok = {"auto", "dynamic", "static", "off"};
                   check(ok.count(cfg.loss_scale) > 0, path,
                         "one of \"auto\", \"dynamic\", \"static\", \"off\"",
                         "\"" + cfg.loss_scale + "\"");
                 } else if (key == "loss_scale_init") {
                   cfg.loss_scale_init = read_float(v, path);
                   // 2^127 is the largest power of two a float holds.
                   check(cfg.loss_scale_init >= 1 && cfg.loss_scale_init <= 0x1p127f, path,
                         "in [1, 2^127]", num(cfg.loss_scale_init));
                 } else if (key == "loss_scale_growth_interval") {
                   cfg.loss_scale_growth_interval = read_int(v, path);
                   check(cfg.loss_scale_growth_interval >= 1, path, ">= 1",
                         std::to_string(cfg.loss_scale_growth_interval));
                 } else if (key == "allreduce_overlap") {
                   cfg.allreduce_overlap = read_bool(v, path);
                 } else if (key == "autotune") {
                   cfg.autotune = read_bool(v, path);
                 } else if (key == "allreduce_bucket_kb") {
                   cfg.allreduce_bucket_kb = read_int(v, path);
                   check(cfg.allreduce_bucket_kb >= 1, path, ">= 1",
                         std::to_string(cfg.allreduce_bucket_kb));
                 } else if (key == "checkpoint_every") {
                   cfg.checkpoint_every = read_int(v, path);
                   check(cfg.checkpoint_every >= 0, path, ">= 0 (0 = only at the end)",
                         std::to_string(cfg.checkpoint_every));
                 } else if (key == "keep_checkpoints") {
                   cfg.keep_checkpoints = read_int(v, path);
                   check(cfg.keep_checkpoints >= 1, path, ">= 1",
                         std::to_string(cfg.keep_checkpoints));
                 } else if (key == "validate_every") {
                   cfg.validate_every = read_int(v, path);
                   check(cfg.validate_every >= 0, path, ">= 0 (0 = only at the end)",
                         std::to_string(cfg.validate_every));
                 } else if (key == "log_every") {
                   cfg.log_every = read_int(v, path);
                   check(cfg.log_every >= 1, path, ">= 1", std::to_string(cfg.log_every));
                 } else if (key == "seed") {
                   if (v.is_number_unsigned()) {
                     cfg.seed = v.get<uint64_t>();
                   } else {
                     const int64_t s = read_int(v, path);
                     check(s >= 0, path, ">= 0", std::to_string(s));
                     cfg.seed = static_cast<uint64_t>(s);
                   }
                 } else if (key == "out_dir") {
                   cfg.out_dir = read_string(v, path);
                   check(!cfg.out_dir.empty(), path, "a directory", "an empty string");
                 } else if (key == "log_file") {
                   cfg.log_file = read_string(v, path);
                   check(!cfg.log_file.empty(), path, "a file name", "an empty string");
                 } else if (key == "tensorboard") {
                   cfg.tensorboard = read_bool(v, path);
                 } else if (key == "init_from") {
                   cfg.init_from = read_string(v, path);
                 } else if (key == "reference_field") {
                   cfg.reference_field = read_string(v, path);
                 } else if (key == "reference_chi") {
                   cfg.reference_chi = read_string(v, path);
                 } else if (key == "reference_mask") {
                   cfg.reference_mask = read_string(v, path);
                 }
               });
}

// Rules that involve more than one key.
void check_combinations(const TrainConfig& cfg) {
  if (cfg.source == "hdf5" && cfg.patch_file.empty())
    fail("data.patch_file: must name an HDF5 file when data.source is \"hdf5\"");
  if (cfg.source != "hdf5" && !cfg.patch_file.empty())
    fail("data.patch_file: is only read when data.source is \"hdf5\" (it is \"", cfg.source, "\")");
  if (cfg.source != "generator" && cfg.refresh_every > 0)
    fail("data.refresh_every: fresh blocks of volumes need data.source \"generator\", not \"",
         cfg.source, "\" (the stream draws fresh volumes with data.train_volumes 0)");
  if (cfg.train_volumes == 0 && cfg.source != "stream")
    fail(
        "data.train_volumes: must be >= 1, got 0 (0 means fresh volumes, data.source \"stream\" "
        "only)");
  if (cfg.reference_field.empty() != cfg.reference_chi.empty())
    fail(cfg.reference_field.empty() ? "train.reference_field" : "train.reference_chi",
         ": train.reference_field and train.reference_chi go together (set both or neither)");
  if (!cfg.reference_mask.empty() && cfg.reference_field.empty())
    fail("train.reference_mask: needs train.reference_field and train.reference_chi");
  if (cfg.lr_schedule == "cosine" && cfg.decay_steps == 0)
    fail(
        "optim.decay_steps: must be >= 1 with optim.schedule \"cosine\" (the updates over "
        "which the rate falls from optim.lr to optim.lr_min)");
  if (cfg.lr_schedule == "constant" && cfg.decay_steps > 0)
    fail("optim.decay_steps: is only read with optim.schedule \"cosine\" (it is \"constant\")");
  if (cfg.lr_min > cfg.optim.lr)
    fail("optim.lr_min: ", cfg.lr_min, " is above optim.lr ", cfg.optim.lr);
}

// Like dump(2), but arrays of numbers stay on one line ("cubes": [80, 120]),
// which is how the configs in configs/ are written and how people read them.
void write_pretty(const nlohmann::ordered_json& j, int indent, std::string& out) {
  const std::string pad(static_cast<size_t>(indent) + 2, ' ');
  if (j.is_object()) {
    out += "{\n";
    size_t i = 0;
    for (const auto& [key, value] : j.items()) {
      out += pad + nlohmann::ordered_json(key).dump() + ": ";
      write_pretty(value, indent + 2, out);
      out += ++i < j.size() ? ",\n" : "\n";
    }
    out += std::string(static_cast<size_t>(indent), ' ') + "}";
  } else if (j.is_array()) {
    out += "[";
    for (size_t i = 0; i < j.size(); ++i) out += (i ? ", " : "") + j[i].dump();
    out += "]";
  } else {
    out += j.dump();
  }
}

}  // namespace

TrainConfig parse_train_config(const std::string& json_text, const std::string& source) {
  try {
    const json root = parse_json_text(json_text);
    TrainConfig cfg;
    for_each_key(root, "", known_keys(),
                 [&](const std::string& key, const json& v, const std::string& path) {
                   if (key == "name")
                     cfg.name = read_string(v, path);
                   else if (key == "model")
                     parse_model(v, cfg.model);
                   else if (key == "data")
                     parse_data(v, cfg);
                   else if (key == "optim")
                     parse_optim(v, cfg);
                   else if (key == "train")
                     parse_train(v, cfg);
                 });
    cfg.data.validate();
    check_combinations(cfg);
    const int64_t multiple = int64_t{1} << (cfg.model.depth - 1);
    if (cfg.data.patch_size % multiple != 0)
      fail("data.patch_size ", cfg.data.patch_size, " is not a multiple of ", multiple,
           " (the U-Net with depth ", cfg.model.depth, " pools ", cfg.model.depth - 1, " times)");
    return cfg;
  } catch (const Error& e) {
    fail(source, ": ", e.what());
  }
}

void check_device_precision(const TrainConfig& cfg) {
  if (cfg.device == "cpu" && cfg.precision != "fp32")
    fail("train.precision \"", cfg.precision,
         "\": the CPU backend trains in fp32 only; use \"fp32\" or train.device \"gpu\"");
}

TrainConfig load_train_config(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(path, ": is a directory, not a config file");
  // A device reads without end (/dev/zero); pipes and process substitution are fine.
  if (std::filesystem::is_character_file(path, ec) || std::filesystem::is_block_file(path, ec))
    fail(path, ": is a device, not a config file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open the config file (", std::strerror(errno), ")");
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) fail(path, ": cannot read the config file");
  return parse_train_config(text.str(), path);
}

// Must stay equivalent to configs/smoke-cpu.json (tests/test_config.cpp
// parses both and compares); the file is what users copy and edit, this is
// what `deepqsm train` runs without --config.
const char* default_train_config_json() {
  return R"json({
  "name": "smoke-cpu",
  "model": {
    "depth": 3,
    "base_filters": 8,
    "dropout": 0.05,
    "residual": false,
    "head_kernel": 1
  },
  "data": {
    "volume_size": 64,
    "cubes": [10, 15],
    "spheres": [10, 15],
    "size": [0.1, 0.4],
    "chi": [-0.2, 0.2],
    "patch_size": 32,
    "patches_per_volume": 16,
    "voxel_mm": [1.0, 1.0, 1.0],
    "b0_dir": [0.0, 0.0, 1.0],
    "dipole_k0": 0.3333333333333333,
    "pad": 0,
    "source": "generator",
    "patch_file": "",
    "refresh_every": 0,
    "train_volumes": 8,
    "val_volumes": 1
  },
  "optim": {
    "lr": 0.001,
    "beta1": 0.9,
    "beta2": 0.99,
    "eps": 1e-08,
    "schedule": "constant",
    "lr_min": 0,
    "warmup_steps": 0,
    "decay_steps": 0
  },
  "train": {
    "steps": 300,
    "batch": 4,
    "device": "cpu",
    "precision": "fp32",
    "loss_scale": "auto",
    "loss_scale_init": 65536,
    "loss_scale_growth_interval": 2000,
    "allreduce_overlap": true,
    "allreduce_bucket_kb": 1024,
    "autotune": true,
    "checkpoint_every": 100,
    "keep_checkpoints": 2,
    "validate_every": 100,
    "log_every": 10,
    "seed": 1,
    "init_from": "",
    "out_dir": "runs/smoke-cpu",
    "log_file": "log.jsonl",
    "tensorboard": true,
    "reference_field": "",
    "reference_chi": "",
    "reference_mask": ""
  }
}
)json";
}

float scheduled_lr(const TrainConfig& cfg, int64_t update) {
  const double lr = cfg.optim.lr;
  const int64_t t = std::max<int64_t>(update, 1);
  if (t <= cfg.warmup_steps)
    return static_cast<float>(lr * static_cast<double>(t) / static_cast<double>(cfg.warmup_steps));
  if (cfg.lr_schedule != "cosine") return cfg.optim.lr;
  const double p = std::min(
      1.0, static_cast<double>(t - cfg.warmup_steps) / static_cast<double>(cfg.decay_steps));
  const double lo = cfg.lr_min;
  return static_cast<float>(lo + 0.5 * (lr - lo) * (1.0 + std::cos(M_PI * p)));
}

std::string train_config_to_json(const TrainConfig& cfg) {
  // ordered_json keeps the documented section and key order.
  using ojson = nlohmann::ordered_json;
  ojson j;
  j["name"] = cfg.name;
  j["model"] = {{"depth", cfg.model.depth},
                {"base_filters", cfg.model.base_filters},
                {"dropout", float_json(cfg.model.dropout)},
                {"residual", cfg.model.residual},
                {"head_kernel", cfg.model.head_kernel}};
  j["data"] = recipe_to_json(cfg.data);
  j["data"]["source"] = cfg.source;
  j["data"]["patch_file"] = cfg.patch_file;
  j["data"]["refresh_every"] = cfg.refresh_every;
  j["data"]["train_volumes"] = cfg.train_volumes;
  j["data"]["val_volumes"] = cfg.val_volumes;
  j["optim"] = {{"lr", float_json(cfg.optim.lr)},       {"beta1", float_json(cfg.optim.beta1)},
                {"beta2", float_json(cfg.optim.beta2)}, {"eps", float_json(cfg.optim.eps)},
                {"schedule", cfg.lr_schedule},          {"lr_min", float_json(cfg.lr_min)},
                {"warmup_steps", cfg.warmup_steps},     {"decay_steps", cfg.decay_steps}};
  j["train"] = {{"steps", cfg.steps},
                {"batch", cfg.batch},
                {"device", cfg.device},
                {"precision", cfg.precision},
                {"loss_scale", cfg.loss_scale},
                {"loss_scale_init", float_json(cfg.loss_scale_init)},
                {"loss_scale_growth_interval", cfg.loss_scale_growth_interval},
                {"allreduce_overlap", cfg.allreduce_overlap},
                {"allreduce_bucket_kb", cfg.allreduce_bucket_kb},
                {"autotune", cfg.autotune},
                {"checkpoint_every", cfg.checkpoint_every},
                {"keep_checkpoints", cfg.keep_checkpoints},
                {"validate_every", cfg.validate_every},
                {"log_every", cfg.log_every},
                {"seed", cfg.seed},
                {"init_from", cfg.init_from},
                {"out_dir", cfg.out_dir},
                {"log_file", cfg.log_file},
                {"tensorboard", cfg.tensorboard},
                {"reference_field", cfg.reference_field},
                {"reference_chi", cfg.reference_chi},
                {"reference_mask", cfg.reference_mask}};
  std::string out;
  write_pretty(j, 0, out);
  return out + "\n";
}

}  // namespace dq
