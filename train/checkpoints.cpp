#include "train/checkpoints.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/error.h"
#include "core/io/output_files.h"

namespace dq {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;

std::string checkpoint_name(int64_t step) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "checkpoint-%08lld.h5", static_cast<long long>(step));
  return buf;
}

// Step of "checkpoint-<digits>.h5", or -1 for any other name.
int64_t checkpoint_step(const std::string& name) {
  const std::string pre = "checkpoint-", post = ".h5";
  if (name.size() <= pre.size() + post.size() || name.compare(0, pre.size(), pre) != 0 ||
      name.compare(name.size() - post.size(), post.size(), post) != 0)
    return -1;
  const std::string digits = name.substr(pre.size(), name.size() - pre.size() - post.size());
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return -1;
  return std::stoll(digits);
}

std::map<int64_t, fs::path> step_checkpoints(const std::string& dir) {
  std::map<int64_t, fs::path> found;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const int64_t s = checkpoint_step(e.path().filename().string());
    if (s >= 0 && e.is_regular_file()) found[s] = e.path();
  }
  return found;
}

// Keys that may change between a run and its resumption without changing
// the trajectory: how long, where, how often to report, and on what device.
// Everything else (model, data, optimiser, seed, batch, precision) must match.
const std::set<std::string>& resume_free_keys() {
  static const std::set<std::string> keys = {"name",
                                             "train.steps",
                                             "train.out_dir",
                                             "train.checkpoint_every",
                                             "train.keep_checkpoints",
                                             "train.validate_every",
                                             "train.log_every",
                                             "train.log_file",
                                             "train.tensorboard",
                                             "train.reference_field",
                                             "train.reference_chi",
                                             "train.reference_mask",
                                             "train.device",
                                             "train.allreduce_overlap",
                                             "train.allreduce_bucket_kb"};
  return keys;
}

// "a.b" of every leaf one or two levels deep in a or b.
std::set<std::string> config_paths(const json& a, const json& b) {
  std::set<std::string> paths;
  for (const json* j : {&a, &b}) {
    for (const auto& [k, v] : j->items()) {
      if (v.is_object())
        for (const auto& [k2, v2] : v.items()) paths.insert(k + "." + k2);
      else
        paths.insert(k);
    }
  }
  return paths;
}

}  // namespace

std::vector<std::string> step_checkpoint_paths(const std::string& dir) {
  std::vector<std::string> paths;
  for (const auto& [step, path] : step_checkpoints(dir)) paths.push_back(path.string());
  return paths;
}

std::string newest_checkpoint(const std::string& dir) {
  const auto all = step_checkpoints(dir);
  if (!all.empty()) return all.rbegin()->second.string();
  const fs::path latest = fs::path(dir) / "checkpoint.h5";
  std::error_code ec;
  return fs::is_regular_file(latest, ec) ? latest.string() : "";
}

std::string write_run_checkpoint(const std::string& dir, int64_t keep, const UNet& net,
                                 const Tensor& params, const Tensor& adam_m, const Tensor& adam_v,
                                 int64_t step, const std::string& config_json,
                                 const TrainingState& state) {
  const fs::path path = fs::path(dir) / checkpoint_name(step);
  save_checkpoint(path.string(), net, params, &adam_m, &adam_v, step, config_json, state);
  // checkpoint.h5 always names the newest: a hard link made under a
  // temporary name and renamed over the old one (core/io/output_files.h), so
  // readers never see a missing or partial file. A copy where links are
  // not supported.
  PendingFile link((fs::path(dir) / "checkpoint.h5").string());
  std::error_code ec;
  fs::remove(link.tmp(), ec);
  fs::create_hard_link(path, link.tmp(), ec);
  if (ec) fs::copy_file(path, link.tmp(), fs::copy_options::overwrite_existing);
  link.finish();
  auto all = step_checkpoints(dir);
  while (static_cast<int64_t>(all.size()) > keep) {
    fs::remove(all.begin()->second, ec);
    all.erase(all.begin());
  }
  return path.string();
}

void check_resumable(const std::string& path, const std::string& stored, const TrainConfig& cfg) {
  json a;
  try {
    a = json::parse(stored);
  } catch (const json::exception&) {
    fail(
        path,
        ": the stored config is not valid JSON; cannot check that --resume continues the same run");
  }
  const json b = json::parse(train_config_to_json(cfg));
  // Keys added to the config after the checkpoint was written take their
  // defaults there, which is what that run did.
  const TrainConfig fresh;
  const json defaults = json::parse(train_config_to_json(fresh));
  std::vector<std::string> diffs;
  for (const std::string& p : config_paths(a, b)) {
    if (resume_free_keys().count(p)) continue;
    std::string pointer = "/" + p;
    const size_t dot = pointer.find('.');
    if (dot != std::string::npos) pointer[dot] = '/';
    const json::json_pointer ptr(pointer);
    if (!a.contains(ptr) && defaults.contains(ptr)) a[ptr] = defaults.at(ptr);
    const bool ina = a.contains(ptr), inb = b.contains(ptr);
    if (ina != inb || (ina && a.at(ptr) != b.at(ptr))) {
      diffs.push_back(p + " (checkpoint " + (ina ? a.at(ptr).dump() : "absent") + ", now " +
                      (inb ? b.at(ptr).dump() : "absent") + ")");
    }
  }
  if (!diffs.empty()) {
    std::string list;
    for (const std::string& d : diffs) list += (list.empty() ? "" : "; ") + d;
    fail("--resume: ", path, " was trained with a different config: ", list,
         ". Only train.steps, out_dir, device, the reporting keys and the all-reduce's overlap and "
         "bucket size may change on resume");
  }
}

}  // namespace dq
