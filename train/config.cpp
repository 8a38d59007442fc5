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
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <utility>
#include <vector>

#include "core/error.h"

namespace dq {
namespace {

using json = nlohmann::json;

// Every key the parser accepts, by section ("" is the top level). The
// unknown-key message searches this table for a suggestion, so it must list
// exactly what parse_section reads below.
const std::vector<std::pair<std::string, std::vector<std::string>>>& known_keys() {
  static const std::vector<std::pair<std::string, std::vector<std::string>>> keys = {
      {"", {"name", "model", "data", "optim", "train"}},
      {"model", {"depth", "base_filters", "dropout", "residual", "head_kernel"}},
      {"data",
       {"volume_size", "cubes", "spheres", "size", "chi", "patch_size", "patches_per_volume",
        "voxel_mm", "b0_dir", "dipole_k0", "pad", "train_volumes", "val_volumes"}},
      {"optim", {"lr", "beta1", "beta2", "eps"}},
      {"train",
       {"steps", "batch", "device", "precision", "checkpoint_every", "validate_every", "log_every",
        "seed", "out_dir"}},
  };
  return keys;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string join_path(const std::string& section, const std::string& key) {
  return section.empty() ? key : section + "." + key;
}

// " (did you mean base_filters?)", " (steps belongs in train: train.steps)", or "".
std::string suggestion(const std::string& section, const std::string& key) {
  for (const auto& [sec, keys] : known_keys()) {
    if (sec != section && std::find(keys.begin(), keys.end(), key) != keys.end())
      return " (" + key + " belongs in " + (sec.empty() ? "the top level" : sec) + ": " +
             join_path(sec, key) + ")";
  }
  for (const auto& [sec, keys] : known_keys()) {
    if (sec != section) continue;
    std::string best;
    size_t best_d = std::max<size_t>(2, key.size() / 3) + 1;
    for (const auto& k : keys) {
      const size_t d = edit_distance(key, k);
      // d < both lengths: "b" is not a typo of "lr" just because both are short.
      if (d < best_d && d < key.size() && d < k.size()) best_d = d, best = k;
    }
    if (!best.empty()) return " (did you mean " + best + "?)";
  }
  return "";
}

std::string type_phrase(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    default: return "an unsupported value";
  }
}

// Reads one value from JSON, refusing anything that is not the expected type.
double read_number(const json& v, const std::string& path) {
  if (!v.is_number()) fail(path, ": expected a number, got ", type_phrase(v));
  const double x = v.get<double>();
  if (!std::isfinite(x)) fail(path, ": ", v.dump(), " is not a finite number");
  return x;
}

// Integers must be integers. A float with an integral value (1e5) is accepted
// because JSON writers and people both write large step counts that way.
int64_t read_int(const json& v, const std::string& path) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(path, ": ", v.dump(), " is too large");
    return static_cast<int64_t>(v.get<uint64_t>());
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double x = v.get<double>();
    // 2^63 is exactly representable, so this bound is exact.
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9223372036854775808.0)
      return static_cast<int64_t>(x);
    fail(path, ": expected an integer, got ", v.dump());
  }
  fail(path, ": expected an integer, got ", type_phrase(v));
}

int read_int32(const json& v, const std::string& path) {
  const int64_t x = read_int(v, path);
  if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
    fail(path, ": ", x, " is out of range");
  return static_cast<int>(x);
}

bool read_bool(const json& v, const std::string& path) {
  if (!v.is_boolean()) fail(path, ": expected true or false, got ", type_phrase(v));
  return v.get<bool>();
}

std::string read_string(const json& v, const std::string& path) {
  if (!v.is_string()) fail(path, ": expected a string, got ", type_phrase(v));
  return v.get<std::string>();
}

const json& read_array(const json& v, const std::string& path, size_t n, const char* what) {
  if (!v.is_array() || v.size() != n)
    fail(path, ": expected ", what, ", got ",
         v.is_array() ? "an array of " + std::to_string(v.size()) : type_phrase(v));
  return v;
}

std::pair<double, double> read_range(const json& v, const std::string& path) {
  read_array(v, path, 2, "[min, max]");
  return {read_number(v[0], path + "[0]"), read_number(v[1], path + "[1]")};
}

std::pair<int, int> read_int_range(const json& v, const std::string& path) {
  read_array(v, path, 2, "[min, max]");
  return {read_int32(v[0], path + "[0]"), read_int32(v[1], path + "[1]")};
}

std::array<double, 3> read_vec3(const json& v, const std::string& path) {
  read_array(v, path, 3, "[x, y, z]");
  return {read_number(v[0], path + "[0]"), read_number(v[1], path + "[1]"),
          read_number(v[2], path + "[2]")};
}

// Float fields (dropout, lr, ...) are read as double and narrowed. Values
// too large for a float are refused here; one that underflows (1e-50 -> 0)
// is caught by the range checks, which run on the narrowed value.
float read_float(const json& v, const std::string& path) {
  const double x = read_number(v, path);
  if (std::fabs(x) > std::numeric_limits<float>::max())
    fail(path, ": ", v.dump(), " is out of range for a 32-bit float");
  return static_cast<float>(x);
}

// Walks one section: calls `read(key, value, path)` for every key, after
// checking the key is known here.
template <typename F>
void for_each_key(const json& obj, const std::string& section, F read) {
  if (!obj.is_object())
    fail(section.empty() ? "the top level" : section, ": expected an object, got ",
         type_phrase(obj));
  const auto& table = known_keys();
  const auto it =
      std::find_if(table.begin(), table.end(), [&](const auto& s) { return s.first == section; });
  for (const auto& [key, value] : obj.items()) {
    const std::string path = join_path(section, key);
    if (std::find(it->second.begin(), it->second.end(), key) == it->second.end())
      fail(path, ": unknown key", suggestion(section, key));
    read(key, value, path);
  }
}

void check(bool ok, const std::string& path, const std::string& rule, const std::string& got) {
  if (!ok) fail(path, ": must be ", rule, ", got ", got);
}

std::string num(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

void parse_model(const json& obj, UNetConfig& m) {
  for_each_key(obj, "model", [&](const std::string& key, const json& v, const std::string& path) {
    if (key == "depth") {
      m.depth = read_int32(v, path);
      check(m.depth >= 2 && m.depth <= 6, path, "in 2..6", std::to_string(m.depth));
    } else if (key == "base_filters") {
      m.base_filters = read_int32(v, path);
      // The deepest level has base_filters * 2^(depth-1) channels; 1024 keeps
      // that far from int overflow and far beyond any useful width.
      check(m.base_filters >= 1 && m.base_filters <= 1024, path, "in 1..1024",
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
  Recipe& r = cfg.data;
  for_each_key(obj, "data", [&](const std::string& key, const json& v, const std::string& path) {
    if (key == "volume_size") {
      r.volume_size = read_int(v, path);
    } else if (key == "cubes") {
      std::tie(r.cubes_min, r.cubes_max) = read_int_range(v, path);
    } else if (key == "spheres") {
      std::tie(r.spheres_min, r.spheres_max) = read_int_range(v, path);
    } else if (key == "size") {
      std::tie(r.size_min, r.size_max) = read_range(v, path);
    } else if (key == "chi") {
      std::tie(r.chi_min, r.chi_max) = read_range(v, path);
    } else if (key == "patch_size") {
      r.patch_size = read_int(v, path);
    } else if (key == "patches_per_volume") {
      r.patches_per_volume = read_int32(v, path);
    } else if (key == "voxel_mm") {
      r.voxel_mm = read_vec3(v, path);
    } else if (key == "b0_dir") {
      auto b = read_vec3(v, path);
      const double n = std::sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2]);
      if (!(n > 0) || !std::isfinite(n))
        fail(path, ": must be a non-zero direction, got ", v.dump());
      r.b0_dir = {b[0] / n, b[1] / n, b[2] / n};
    } else if (key == "dipole_k0") {
      r.dipole_k0 = read_number(v, path);
    } else if (key == "pad") {
      r.pad = read_int(v, path);
    } else if (key == "train_volumes") {
      cfg.train_volumes = read_int(v, path);
      check(cfg.train_volumes >= 1, path, ">= 1", std::to_string(cfg.train_volumes));
    } else if (key == "val_volumes") {
      cfg.val_volumes = read_int(v, path);
      check(cfg.val_volumes >= 1, path, ">= 1 (validation compares with TKD on them)",
            std::to_string(cfg.val_volumes));
    }
  });
}

void parse_optim(const json& obj, AdamConfig& o) {
  for_each_key(obj, "optim", [&](const std::string& key, const json& v, const std::string& path) {
    const float x = read_float(v, path);
    if (key == "lr") {
      check(x > 0, path, "> 0", num(x));
      o.lr = x;
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
  for_each_key(obj, "train", [&](const std::string& key, const json& v, const std::string& path) {
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
    } else if (key == "checkpoint_every") {
      cfg.checkpoint_every = read_int(v, path);
      check(cfg.checkpoint_every >= 0, path, ">= 0 (0 = only at the end)",
            std::to_string(cfg.checkpoint_every));
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
    }
  });
}

// Rejects duplicate keys, which nlohmann would otherwise resolve silently by
// keeping the last one. `keys` holds the keys seen so far in each open object
// and `names` the key each open object was stored under, for the path.
struct DuplicateKeyCheck {
  std::vector<std::set<std::string>> keys;
  std::vector<std::string> names;
  std::string last_key;

  bool operator()(int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        names.push_back(keys.empty() ? "" : last_key);
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        keys.pop_back();
        names.pop_back();
        break;
      case json::parse_event_t::key:
        last_key = parsed.get<std::string>();
        if (!keys.back().insert(last_key).second) {
          std::string path;
          for (size_t i = 1; i < names.size(); ++i) path = join_path(path, names[i]);
          fail(join_path(path, last_key), ": duplicate key");
        }
        break;
      default: break;
    }
    return true;
  }
};

// nlohmann's message reads "[json.exception.parse_error.101] parse error at
// line 3, column 5: syntax error while parsing ..."; keep what follows the
// position and print the position ourselves so every message has one shape.
std::string json_syntax_message(const json::parse_error& e, const std::string& text) {
  std::string what = e.what();
  const std::string marker = "parse error";
  const size_t p = what.find(marker);
  if (p != std::string::npos) {
    const size_t colon = what.find(": ", p);
    what = colon == std::string::npos ? what.substr(p) : what.substr(colon + 2);
  }
  size_t line = 1, col = 0;
  const size_t end = std::min<size_t>(e.byte, text.size());
  for (size_t i = 0; i < end; ++i) {
    col = text[i] == '\n' ? 0 : col + 1;
    line += text[i] == '\n';
  }
  std::ostringstream os;
  os << "invalid JSON at line " << line << ", column " << std::max<size_t>(col, 1) << ": " << what;
  return os.str();
}

// Shortest decimal that reads back as the same float, so 1e-3f prints as
// 0.001 and not 0.0010000000474974513.
json float_json(float f) {
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, f);
  return json::parse(std::string(buf, res.ptr));
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
    json root;
    try {
      root = json::parse(json_text, DuplicateKeyCheck{});
    } catch (const json::parse_error& e) {
      fail(json_syntax_message(e, json_text));
    }
    TrainConfig cfg;
    for_each_key(root, "", [&](const std::string& key, const json& v, const std::string& path) {
      if (key == "name")
        cfg.name = read_string(v, path);
      else if (key == "model")
        parse_model(v, cfg.model);
      else if (key == "data")
        parse_data(v, cfg);
      else if (key == "optim")
        parse_optim(v, cfg.optim);
      else if (key == "train")
        parse_train(v, cfg);
    });
    cfg.data.validate();
    const int64_t multiple = int64_t{1} << (cfg.model.depth - 1);
    if (cfg.data.patch_size % multiple != 0)
      fail("data.patch_size ", cfg.data.patch_size, " is not a multiple of ", multiple,
           " (the U-Net with depth ", cfg.model.depth, " pools ", cfg.model.depth - 1, " times)");
    return cfg;
  } catch (const Error& e) {
    fail(source, ": ", e.what());
  }
}

TrainConfig load_train_config(const std::string& path) {
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
    "train_volumes": 8,
    "val_volumes": 1
  },
  "optim": {
    "lr": 0.001,
    "beta1": 0.9,
    "beta2": 0.99,
    "eps": 1e-08
  },
  "train": {
    "steps": 300,
    "batch": 4,
    "device": "cpu",
    "precision": "fp32",
    "checkpoint_every": 100,
    "validate_every": 100,
    "log_every": 10,
    "seed": 1,
    "out_dir": "runs/smoke-cpu"
  }
}
)json";
}

std::string train_config_to_json(const TrainConfig& cfg) {
  // ordered_json keeps the documented section and key order.
  using ojson = nlohmann::ordered_json;
  const Recipe& r = cfg.data;
  ojson j;
  j["name"] = cfg.name;
  j["model"] = {{"depth", cfg.model.depth},
                {"base_filters", cfg.model.base_filters},
                {"dropout", float_json(cfg.model.dropout)},
                {"residual", cfg.model.residual},
                {"head_kernel", cfg.model.head_kernel}};
  j["data"] = {{"volume_size", r.volume_size},
               {"cubes", {r.cubes_min, r.cubes_max}},
               {"spheres", {r.spheres_min, r.spheres_max}},
               {"size", {r.size_min, r.size_max}},
               {"chi", {r.chi_min, r.chi_max}},
               {"patch_size", r.patch_size},
               {"patches_per_volume", r.patches_per_volume},
               {"voxel_mm", r.voxel_mm},
               {"b0_dir", r.b0_dir},
               {"dipole_k0", r.dipole_k0},
               {"pad", r.pad},
               {"train_volumes", cfg.train_volumes},
               {"val_volumes", cfg.val_volumes}};
  j["optim"] = {{"lr", float_json(cfg.optim.lr)},
                {"beta1", float_json(cfg.optim.beta1)},
                {"beta2", float_json(cfg.optim.beta2)},
                {"eps", float_json(cfg.optim.eps)}};
  j["train"] = {{"steps", cfg.steps},
                {"batch", cfg.batch},
                {"device", cfg.device},
                {"precision", cfg.precision},
                {"checkpoint_every", cfg.checkpoint_every},
                {"validate_every", cfg.validate_every},
                {"log_every", cfg.log_every},
                {"seed", cfg.seed},
                {"out_dir", cfg.out_dir}};
  std::string out;
  write_pretty(j, 0, out);
  return out + "\n";
}

}  // namespace dq
