#include "train/trainer.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <vector>

#include "core/error.h"
#include "core/io/nifti_io.h"
#include "core/io/output_files.h"
#include "core/nn/checkpoint.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/loss_scale.h"
#include "core/nn/philox.h"
#include "core/parallel.h"
#include "core/qsm/metrics.h"
#include "core/qsm/tkd.h"
#include "cuda/check.h"
#include "cuda/nn/cuda_backend.h"
#include "synth/stream.h"  // kValidationVolumeBase, shared with the stream
#include "synth/synth.h"
#include "train/comm.h"
#include "train/patch_source.h"
#include "train/tensorboard.h"

namespace dq {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr uint64_t kBatchPurpose = 1, kDropoutPurpose = 2, kInitPurpose = 3;

// The signal that asked this process to stop (0: none). Set by the handler,
// read once per step.
volatile sig_atomic_t g_stop_signal = 0;

extern "C" void record_stop_signal(int sig) { g_stop_signal = sig; }

// SIGTERM and SIGINT ask for a clean stop while training runs; the handler
// resets itself (SA_RESETHAND), so a second signal ends the process as
// usual. A rank started by `--gpus N` ignores SIGINT (Ctrl-C reaches the
// parent too, which forwards it as one SIGTERM, spawn_local_ranks) and keeps
// its SIGTERM handler: a signal to the whole process group (timeout(1), a
// batch system) reaches it directly and again through the parent, and the
// second must not kill it before its checkpoint. The parent escalates to
// SIGKILL on a second signal of its own.
class StopSignals {
 public:
  StopSignals() {
    g_stop_signal = 0;
    struct sigaction sa {};
    sa.sa_handler = record_stop_signal;
    sigemptyset(&sa.sa_mask);
    const bool spawned_rank = std::getenv(kRankEnv) != nullptr;
    sa.sa_flags = spawned_rank ? SA_RESTART : SA_RESETHAND | SA_RESTART;
    sigaction(SIGTERM, &sa, &old_term_);
    if (spawned_rank) sa.sa_handler = SIG_IGN;
    sigaction(SIGINT, &sa, &old_int_);
  }
  ~StopSignals() {
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGINT, &old_int_, nullptr);
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_term_ {}, old_int_ {};
};

// Device memory one rank's training takes, reserved as one arena at start so
// the steps allocate nothing (device_pool.h): the U-Net's activations and
// gradient scratch for the rank's batch (UNet::activation_bytes, the same
// plan the passes use), the batch's field, target, prediction and gradient,
// parameters with their gradient, Adam moments and the all-reduce buffer,
// a validation pass of one patch, and cuDNN workspaces; bf16/fp16 add their
// half-precision operand copies. The paper recipe (batch 40 of 64^3, fp32)
// comes to about 10.8 GB, inside a 16 GB V100. An underestimate only means
// the pool grows once (reported at the end of the run, with the real peak).
size_t training_arena_bytes(const TrainConfig& cfg, int world) {
  const int64_t P = cfg.data.patch_size, local = std::max<int64_t>(1, cfg.batch / world);
  const UNet net(cfg.model);
  const double act = static_cast<double>(net.activation_bytes(Shape{local, P, P, P, 1}));
  const double val = static_cast<double>(net.activation_bytes(Shape{1, P, P, P, 1})) / 2.0;
  const double batch = 4.0 * 4.0 * static_cast<double>(local * P * P * P);
  const double params = 5.0 * 4.0 * static_cast<double>(net.layout().total());
  // Half-precision copies live for one layer at a time (the largest layer's
  // operands, a fraction of all activations).
  const double half = cfg.precision == "bf16" || cfg.precision == "fp16" ? 0.1 * act : 0.0;
  const double workspace = 2.0 * static_cast<double>(CudaBackendOptions{}.workspace_limit);
  return static_cast<size_t>(1.1 * (act + val + batch + params + half) + workspace);
}

// Called after the communicator, which has made this rank's GPU current.
std::unique_ptr<Backend> make_backend(const TrainConfig& cfg, int world) {
  check_device_precision(cfg);
  if (cfg.device == "cpu") return make_cpu_backend();
  CudaBackendOptions o;
  DQ_CUDA(cudaGetDevice(&o.device));
  o.precision = cfg.precision;
  o.arena_bytes = training_arena_bytes(cfg, world);
  o.autotune = cfg.autotune;
  return make_cuda_backend(o);
}

// A backend that fails to start on one rank (no cuDNN, memory taken by
// another process) must end all: the others already wait in a collective,
// and unwinding would destroy the communicator, which waits for them too.
std::unique_ptr<Backend> make_backend_or_abort(const TrainConfig& cfg, Communicator& comm) {
  try {
    return make_backend(cfg, comm.size());
  } catch (const std::exception& e) {
    if (comm.size() > 1) {
      std::fprintf(stderr, "deepqsm: rank %d: %s\n", comm.rank(), e.what());
      std::fflush(stderr);
      comm.abort(1);
    }
    throw;
  }
}

double mse(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return s / static_cast<double>(n);
}

// The loss scaler train.loss_scale asks for, or null when the loss is not
// scaled ("auto": dynamic for fp16, whose gradients underflow without it).
std::unique_ptr<LossScaler> make_loss_scaler(const TrainConfig& cfg) {
  const std::string mode = cfg.loss_scale != "auto"  ? cfg.loss_scale
                           : cfg.precision == "fp16" ? "dynamic"
                                                     : "off";
  if (mode == "off") return nullptr;
  LossScaleConfig lc;
  lc.dynamic = mode == "dynamic";
  lc.initial_scale = cfg.loss_scale_init;
  lc.growth_interval = cfg.loss_scale_growth_interval;
  return std::make_unique<LossScaler>(lc);
}

std::string format_duration(double seconds) {
  long s = std::lround(std::max(0.0, seconds));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  return buf;
}

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
  std::set<std::string> paths;
  auto collect = [&](const json& j) {
    for (const auto& [k, v] : j.items()) {
      if (v.is_object())
        for (const auto& [k2, v2] : v.items()) paths.insert(k + "." + k2);
      else
        paths.insert(k);
    }
  };
  collect(a);
  collect(b);
  for (const std::string& p : paths) {
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

// Per-patch means of the image metrics over (N, P, P, P, 1) patches; patches
// whose reference is constant (all background) have no NRMSE or SSIM and are
// skipped for those, but count for the MSE.
struct PatchMetrics {
  double mse = 0, nrmse = 0, hfen = 0, xsim = 0;
  int64_t scored = 0;  // patches with a non-constant reference
};

PatchMetrics patch_metrics(const float* pred, const Tensor& ref, const Recipe& r) {
  const int64_t n = ref.dim(0), P = ref.dim(1), per = ref.numel() / n;
  PatchMetrics pm;
  pm.mse = mse(pred, ref.f32(), ref.numel());
  for (int64_t i = 0; i < n; ++i) {
    const float* t = ref.f32() + i * per;
    const auto [lo, hi] = std::minmax_element(t, t + per);
    if (*lo == *hi) continue;
    const Metrics m = compute_metrics(pred + i * per, t, nullptr, P, P, P, r.voxel_mm);
    pm.nrmse += m.nrmse;
    pm.hfen += m.hfen;
    pm.xsim += m.xsim;
    ++pm.scored;
  }
  if (pm.scored > 0) {
    pm.nrmse /= static_cast<double>(pm.scored);
    pm.hfen /= static_cast<double>(pm.scored);
    pm.xsim /= static_cast<double>(pm.scored);
  }
  return pm;
}

// The optional evaluation pair, read once: field and reference chi (ppm),
// an optional mask, zero-padded at the far end of each axis to the U-Net's
// side multiple.
struct ReferencePair {
  Volume field, chi;
  std::vector<uint8_t> mask;  // empty: every voxel
  int64_t pd = 0, ph = 0, pw = 0;
};

bool same_grid(const Volume& a, const Volume& b) {
  return a.nx == b.nx && a.ny == b.ny && a.nz == b.nz;
}

ReferencePair load_reference(const TrainConfig& cfg, int64_t multiple) {
  ReferencePair r;
  r.field = read_nifti(cfg.reference_field);
  r.chi = read_nifti(cfg.reference_chi);
  if (!same_grid(r.field, r.chi))
    fail("train.reference_chi ", cfg.reference_chi,
         " has a different grid than train.reference_field");
  if (!cfg.reference_mask.empty()) {
    const Volume m = read_nifti(cfg.reference_mask);
    if (!same_grid(m, r.field))
      fail("train.reference_mask ", cfg.reference_mask,
           " has a different grid than train.reference_field");
    r.mask.resize(m.data.size());
    // > 0.5 is inside, as in every other command.
    for (size_t i = 0; i < m.data.size(); ++i) r.mask[i] = m.data[i] > 0.5f;
  }
  // What the metrics would refuse at the first validation, refused now,
  // before the training it would otherwise cut short.
  int64_t inside = 0, bad = 0;
  double lo = INFINITY, hi = -INFINITY;
  for (size_t i = 0; i < r.chi.data.size(); ++i) {
    if (!r.mask.empty() && !r.mask[i]) continue;
    ++inside;
    const float f = r.field.data[i], c = r.chi.data[i];
    bad += !std::isfinite(f) || !std::isfinite(c);
    lo = std::min<double>(lo, c);
    hi = std::max<double>(hi, c);
  }
  if (inside == 0) fail("train.reference_mask ", cfg.reference_mask, ": no voxel is inside");
  if (bad > 0)
    fail("train.reference_field/reference_chi: ", bad,
         " voxels inside the mask are NaN or infinite; the metrics need finite values");
  if (!(hi > lo))
    fail("train.reference_chi ", cfg.reference_chi,
         ": constant inside the mask, so NRMSE and HFEN are undefined");
  auto up = [&](int64_t n) { return (n + multiple - 1) / multiple * multiple; };
  r.pd = up(r.field.nz);
  r.ph = up(r.field.ny);
  r.pw = up(r.field.nx);
  return r;
}

struct Trainer {
  const TrainConfig& cfg;
  const TrainOptions& opt;
  std::unique_ptr<Communicator> comm;
  std::unique_ptr<Backend> be;
  UNet net, eval_net;                   // eval_net keeps validation buffers apart from training's
  std::unique_ptr<UNet> ref_net;        // the reference volume's (large) buffers, if any
  Tensor params, m, v;                  // on the backend's device, layout of net
  Tensor reduce_buf, grads, loss_slot;  // reduce_buf = [grads | loss | stop | pad]
  Tensor status_slots;                  // [loss | stop]: the mean loss, > 0 when a rank must stop
  int64_t loss_slot_end = 0;            // reduce_buf[0, loss_slot_end) is what must be averaged
  std::unique_ptr<LossScaler> scaler;   // null: the loss is not scaled
  std::unique_ptr<PatchSource> source;
  PatchSet val_set;
  std::unique_ptr<ReferencePair> reference;
  std::ofstream log;
  std::unique_ptr<TensorBoardWriter> tb;
  std::string out_dir;
  const std::string config_json;
  bool lead = true;  // rank 0: validates, logs, writes checkpoints
  bool tty = false;

  Trainer(const TrainConfig& c, const TrainOptions& o)
      : cfg(c),
        opt(o),
        comm(make_communicator(c.device)),
        be(make_backend_or_abort(c, *comm)),
        net(c.model),
        eval_net(c.model),
        config_json(train_config_to_json(c)) {
    lead = comm->rank() == 0;
    tty = lead && !opt.quiet && isatty(fileno(stdout));
  }

  void say(const std::string& s) const {
    if (!lead || opt.quiet) return;
    std::printf("%s%s\n", tty ? "\r\033[K" : "", s.c_str());
    std::fflush(stdout);
  }
  void log_json(const nlohmann::json& j) {
    if (lead) log << j.dump() << "\n" << std::flush;
  }
  void tb_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values) {
    if (tb) tb->scalars(step, values);
  }

  Tensor to_host(const Tensor& t) {
    Tensor h = Tensor::zeros(t.shape());
    be->download(t, h);
    return h;
  }

  PatchMetrics validate() {
    const int64_t n = val_set.field.dim(0), per = val_set.field.numel() / n;
    const Shape one{1, val_set.field.dim(1), val_set.field.dim(2), val_set.field.dim(3), 1};
    Tensor x = be->alloc(one), y = be->alloc(one), host_y = Tensor::zeros(one);
    std::vector<float> pred(static_cast<size_t>(val_set.field.numel()));
    for (int64_t i = 0; i < n; ++i) {
      be->upload(val_set.field.slice(i * per, one), x);
      eval_net.forward(*be, params, x, y, false);
      be->download(y, host_y);
      std::copy(host_y.f32(), host_y.f32() + per, pred.data() + i * per);
    }
    return patch_metrics(pred.data(), val_set.chi, cfg.data);
  }

  Metrics validate_reference(double* masked_mse) {
    ReferencePair& r = *reference;
    const Shape s{1, r.pd, r.ph, r.pw, 1};
    Tensor host_x = Tensor::zeros(s), host_y = Tensor::zeros(s);
    for (int64_t z = 0; z < r.field.nz; ++z)
      for (int64_t yy = 0; yy < r.field.ny; ++yy)
        std::copy_n(r.field.data.data() + (z * r.field.ny + yy) * r.field.nx, r.field.nx,
                    host_x.f32() + (z * r.ph + yy) * r.pw);
    Tensor x = be->alloc(s), y = be->alloc(s);
    be->upload(host_x, x);
    if (!ref_net) ref_net = std::make_unique<UNet>(cfg.model);
    ref_net->forward(*be, params, x, y, false);
    be->download(y, host_y);
    std::vector<float> pred(r.chi.data.size());
    for (int64_t z = 0; z < r.field.nz; ++z)
      for (int64_t yy = 0; yy < r.field.ny; ++yy)
        std::copy_n(host_y.f32() + (z * r.ph + yy) * r.pw, r.field.nx,
                    pred.data() + (z * r.field.ny + yy) * r.field.nx);
    double s2 = 0;
    int64_t cnt = 0;
    for (size_t i = 0; i < pred.size(); ++i) {
      if (!r.mask.empty() && !r.mask[i]) continue;
      s2 += (double(pred[i]) - r.chi.data[i]) * (double(pred[i]) - r.chi.data[i]);
      ++cnt;
    }
    *masked_mse = cnt ? s2 / static_cast<double>(cnt) : 0.0;
    return compute_metrics(pred.data(), r.chi.data.data(), r.mask.empty() ? nullptr : r.mask.data(),
                           r.field.nz, r.field.ny, r.field.nx, r.field.voxel_mm);
  }

  // Rank 0 writes; every rank first agrees that the weights are identical,
  // which is the data-parallel invariant (comm.h) and cheap to check here.
  std::string save(int64_t step) {
    const Tensor hp = to_host(params);
    uint64_t mine = params_checksum(net, hp), lead_sum = mine;
    comm->broadcast_bytes(&lead_sum, sizeof lead_sum, 0);
    if (lead_sum != mine)
      fail("rank ", comm->rank(), " holds different weights than rank 0 at step ", step,
           " (data-parallel ranks diverged)");
    if (!lead) return "";
    const Tensor hm = to_host(m), hv = to_host(v);
    const fs::path dir(out_dir);
    const fs::path path = dir / checkpoint_name(step);
    TrainingState st;
    st.seed = cfg.seed;
    st.data_position = source->position(step - 1);
    if (scaler) st.loss_scale = scaler->state();
    save_checkpoint(path.string(), net, hp, &hm, &hv, step, config_json, st);
    // checkpoint.h5 always names the newest: a hard link made under a
    // temporary name and renamed over the old one (core/io/output_files.h), so
    // readers never see a missing or partial file. A copy where links are
    // not supported.
    const fs::path latest = dir / "checkpoint.h5";
    PendingFile link(latest.string());
    std::error_code ec;
    fs::remove(link.tmp(), ec);
    fs::create_hard_link(path, link.tmp(), ec);
    if (ec) fs::copy_file(path, link.tmp(), fs::copy_options::overwrite_existing);
    link.finish();
    auto all = step_checkpoints(out_dir);
    while (static_cast<int64_t>(all.size()) > cfg.keep_checkpoints) {
      fs::remove(all.begin()->second, ec);
      all.erase(all.begin());
    }
    log_json({{"step", step}, {"event", "checkpoint"}, {"path", path.string()}});
    return latest.string();
  }
};

// Everything up to the loop; returns the first step to run.
int64_t set_up(Trainer& t, TrainResult& res, int64_t steps) {
  const TrainConfig& cfg = t.cfg;
  const int world = t.comm->size();
  const int64_t P = cfg.data.patch_size;
  if (cfg.batch % world != 0)
    fail("train.batch ", cfg.batch, " does not split evenly over ", world,
         " ranks; make it a multiple of ", world);
  t.net.check_input(Shape{cfg.batch / world, P, P, P, 1});
  t.out_dir = t.opt.out_dir.empty() ? cfg.out_dir : t.opt.out_dir;
  if (t.lead) {
    // The files the run reads, before the output folder is made: a typo in
    // a path should leave nothing behind.
    const std::pair<const char*, const std::string*> inputs[] = {
        {"data.patch_file", &cfg.patch_file},
        {"train.reference_field", &cfg.reference_field},
        {"train.reference_chi", &cfg.reference_chi},
        {"train.reference_mask", &cfg.reference_mask},
        {"train.init_from", t.opt.resume ? nullptr : &cfg.init_from}};
    for (const auto& [key, path] : inputs) {
      std::error_code ec;
      if (path && !path->empty() && !fs::is_regular_file(*path, ec))
        fail(key, ": no such file ", *path);
    }
    // A fresh run in a folder that holds another run's checkpoints would
    // overwrite them step by step and mix the two logs.
    if (!t.opt.resume) {
      const std::string existing = newest_checkpoint(t.out_dir);  // a step file or checkpoint.h5
      if (!existing.empty())
        fail(t.out_dir, " already holds a run's checkpoints (newest ",
             fs::path(existing).filename().string(),
             "); continue it with --resume, or give another --out");
    }
    fs::create_directories(t.out_dir);
    const fs::path log_path = fs::path(t.out_dir) / cfg.log_file;
    t.log.open(log_path, std::ios::app);
    if (!t.log) fail("cannot write ", log_path.string());
    if (cfg.tensorboard) t.tb = std::make_unique<TensorBoardWriter>(t.out_dir + "/tb");
  }

  // Parameters and optimiser state: fresh from the seed, or from the newest
  // checkpoint (read by rank 0 and broadcast, so ranks cannot disagree).
  const Shape flat{t.net.layout().total()};
  Tensor hp = Tensor::zeros(flat), hm = Tensor::zeros(flat), hv = Tensor::zeros(flat);
  int64_t start = 0;
  t.scaler = make_loss_scaler(cfg);
  if (t.opt.resume) {
    LossScaleState scale_state;
    if (t.lead) {
      const std::string path = newest_checkpoint(t.out_dir);
      if (path.empty())
        fail("--resume: no checkpoint in ", t.out_dir, " (expected checkpoint-<step>.h5 files)");
      CheckpointData ck = load_checkpoint(path);
      if (ck.version < 2 || !ck.adam_m.defined())
        fail("--resume: ", path, " holds no optimiser state (version ", ck.version,
             " or weights only); it can seed inference, not continue a run");
      check_resumable(path, ck.config_json, cfg);
      hp = ck.params;
      hm = ck.adam_m;
      hv = ck.adam_v;
      start = ck.step;
      scale_state = ck.state.loss_scale;
      // check_resumable has matched train.loss_scale and the precision, so
      // a scaler here with no state stored means a damaged or foreign file.
      if (t.scaler && scale_state.scale == 0.0f)
        fail("--resume: ", path, " holds no loss-scale state, but train.loss_scale \"",
             cfg.loss_scale, "\" with precision \"", cfg.precision, "\" scales the loss");
      t.log_json({{"step", start}, {"event", "resume"}, {"path", path}});
      t.say("resuming from " + path + " at step " + std::to_string(start));
    }
    t.comm->broadcast_bytes(&start, sizeof start, 0);
    t.comm->broadcast_bytes(&scale_state, sizeof scale_state, 0);
    if (t.scaler) t.scaler->restore(scale_state);
  } else if (!cfg.init_from.empty()) {
    // Rank 0 reads the weights; the broadcast below hands them to the rest.
    if (t.lead) {
      CheckpointData ck = load_checkpoint(cfg.init_from, /*weights_only=*/true);
      if (!same_architecture(ck.model, cfg.model))
        fail("train.init_from: ", cfg.init_from, " holds a U-Net of ",
             describe_architecture(ck.model), "; the config's model is ",
             describe_architecture(cfg.model));
      hp = ck.params;
      t.log_json({{"step", 0}, {"event", "init"}, {"path", cfg.init_from}});
      t.say("initialised from the weights in " + cfg.init_from + " (Adam moments start at zero)");
    }
  } else {
    t.net.init_he(hp, key_for(cfg.seed, kInitPurpose));
  }
  res.resumed_from = start;
  t.params = t.be->alloc(flat);
  t.m = t.be->alloc(flat);
  t.v = t.be->alloc(flat);
  t.be->upload(hp, t.params);
  t.be->upload(hm, t.m);
  t.be->upload(hv, t.v);
  t.comm->broadcast(t.params, 0);
  t.comm->broadcast(t.m, 0);
  t.comm->broadcast(t.v, 0);
  // One buffer carries the gradient, the local loss and the stop request,
  // so one all-reduce averages them all; 16 extra floats keep the layout's
  // 64-byte alignment.
  t.reduce_buf = t.be->alloc(Shape{flat.numel() + 16});
  t.grads = t.reduce_buf.slice(0, flat);
  t.loss_slot = t.reduce_buf.slice(flat.numel(), Shape{1});
  t.status_slots = t.reduce_buf.slice(flat.numel(), Shape{2});
  t.loss_slot_end = flat.numel() + 2;

  // Data. Only rank 0 validates, so only it builds the held-out set.
  auto t0 = std::chrono::steady_clock::now();
  t.source = make_patch_source(cfg);
  if (start < steps) t.source->prepare(start);
  char line[512];
  if (t.lead) {
    t.val_set = generate_patches(cfg.data, cfg.seed, kValidationVolumeBase, cfg.val_volumes);
    const Tensor tkd = tkd_patches(t.val_set.field, cfg.data.voxel_mm, cfg.data.b0_dir,
                                   kTkdThreshold, cfg.data.dipole_k0);
    const PatchMetrics tm = patch_metrics(tkd.f32(), t.val_set.chi, cfg.data);
    res.tkd_val_mse = tm.mse;
    std::vector<float> zeros(static_cast<size_t>(tkd.numel()), 0.0f);
    res.zero_val_mse = mse(zeros.data(), t.val_set.chi.f32(), tkd.numel());
    const double gen_s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    std::snprintf(line, sizeof line,
                  "data: %s; %lld held-out %lld^3 patches; ready in %.1f s. Held-out TKD "
                  "(t = 0.19): MSE %.3e ppm^2, NRMSE %.1f %%, HFEN %.1f %%, XSIM %.3f; chi = 0: "
                  "MSE %.3e",
                  t.source->describe().c_str(), static_cast<long long>(t.val_set.field.dim(0)),
                  static_cast<long long>(P), gen_s, tm.mse, tm.nrmse, tm.hfen, tm.xsim,
                  res.zero_val_mse);
    t.say(line);
    t.log_json({{"step", start},
                {"event", "baseline"},
                {"tkd_val_mse", tm.mse},
                {"tkd_val_nrmse", tm.nrmse},
                {"tkd_val_hfen", tm.hfen},
                {"tkd_val_xsim", tm.xsim},
                {"zero_val_mse", res.zero_val_mse}});
    if (!cfg.reference_field.empty())
      t.reference = std::make_unique<ReferencePair>(load_reference(cfg, t.net.side_multiple()));
  }
  std::string device = t.be->name();
  if (t.be->device() == Device::cpu)
    device += ", " + std::to_string(cpu_threads()) + (cpu_threads() == 1 ? " thread" : " threads");
  std::snprintf(line, sizeof line,
                "model: U-Net depth %d, base %d filters, %lld parameters; %s; %s; global batch "
                "%lld (%lld per rank)",
                cfg.model.depth, cfg.model.base_filters,
                static_cast<long long>(t.net.layout().count()), device.c_str(),
                t.comm->name().c_str(), static_cast<long long>(cfg.batch),
                static_cast<long long>(cfg.batch / world));
  t.say(line);
  if (world > 1) {
    t.say(cfg.allreduce_overlap
              ? "gradient all-reduce: overlapped with the backward pass, " +
                    std::to_string(cfg.allreduce_bucket_kb) + " KB buckets"
              : std::string("gradient all-reduce: one call after the backward pass"));
  }
  if (t.scaler) {
    std::snprintf(line, sizeof line, "loss scale: %s, %g now, %lld steps skipped so far",
                  cfg.loss_scale == "static" ? "static" : "dynamic",
                  static_cast<double>(t.scaler->scale()),
                  static_cast<long long>(t.scaler->skipped_steps()));
    t.say(line);
  }
  return start;
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

TrainResult run_training(const TrainConfig& cfg, const TrainOptions& opt) {
  const StopSignals stop_signals;
  Trainer t(cfg, opt);
  TrainResult res;
  res.rank = t.comm->rank();
  res.world = t.comm->size();
  bool all_ranks_fail = false;
  try {
    const int64_t steps = opt.steps_override > 0 ? opt.steps_override : cfg.steps;
    const int64_t start = set_up(t, res, steps);
    res.steps = start;
    if (start >= steps) {
      t.say("the checkpoint is at step " + std::to_string(start) + ", not before step " +
            std::to_string(steps) + "; nothing to train (raise --steps)");
      if (t.lead) res.checkpoint = newest_checkpoint(t.out_dir);
      return res;
    }
    const int world = t.comm->size(), rank = t.comm->rank();
    const int64_t P = cfg.data.patch_size, G = cfg.batch, B = G / world;
    const Shape bs{B, P, P, P, 1};
    Tensor host_field = Tensor::zeros(bs), host_chi = Tensor::zeros(bs),
           host_status = Tensor::zeros({2});
    Tensor batch_field = t.be->alloc(bs), batch_chi = t.be->alloc(bs), pred = t.be->alloc(bs),
           dpred = t.be->alloc(bs);
    std::vector<int64_t> idx(static_cast<size_t>(B));
    // One process has nothing to reduce, so nothing to overlap.
    const bool overlap = cfg.allreduce_overlap && world > 1;
    const int64_t bucket = cfg.allreduce_bucket_kb * 1024 / static_cast<int64_t>(sizeof(float));
    char line[512];
    const auto t_start = std::chrono::steady_clock::now();
    for (int64_t step = start; step < steps; ++step) {
      const int64_t done = step + 1;
      if (t.source->prepare(step))
        t.log_json({{"step", step}, {"event", "data"}, {"block", t.source->position(step)}});
      // The global batch: G patches drawn uniformly (with replacement) from a
      // counter RNG keyed by (seed, step); rank r takes draws [rB, (r+1)B).
      // With one rank that is the whole batch, so W ranks x B see exactly the
      // patches of 1 rank x WB.
      const int64_t n_train = t.source->size();
      const uint64_t bkey = key_for(key_for(cfg.seed, kBatchPurpose), static_cast<uint64_t>(step));
      for (int64_t b = 0; b < B; ++b) {
        const uint64_t draw = static_cast<uint64_t>(rank * B + b);
        idx[static_cast<size_t>(b)] =
            t.source->deals_batches()
                ? rank * B + b  // the stream dealt the global batch; this rank's slice
                : std::min<int64_t>(n_train - 1, static_cast<int64_t>(philox_uniform(bkey, draw) *
                                                                      static_cast<float>(n_train)));
      }
      t.source->gather(idx, host_field.f32(), host_chi.f32());
      t.be->upload(host_field, batch_field);
      t.be->upload(host_chi, batch_chi);

      // Dropout masks are keyed by step, and each rank's samples take the
      // masks of their place in the global batch, so W ranks x B draw
      // exactly the masks of 1 rank x WB.
      const uint64_t dkey =
          key_for(key_for(cfg.seed, kDropoutPurpose), static_cast<uint64_t>(step));
      t.net.forward(*t.be, t.params, batch_field, pred, true, dkey, rank * B);
      const float local_loss = t.be->mse_loss(pred, batch_chi, &dpred);
      // Each rank's loss is the mean over its B patches; the mean over ranks
      // of equal-sized shards is the global batch's mean, and so is the
      // averaged gradient.
      t.be->fill(t.loss_slot, local_loss);
      // A stop request (any rank's signal) is averaged with the gradients,
      // so every rank learns of it after the same step.
      Tensor stop_slot = t.status_slots.slice(1, Shape{1});
      t.be->fill(stop_slot, g_stop_signal != 0 ? 1.0f : 0.0f);
      if (t.scaler) t.be->scale(dpred, t.scaler->scale());
      if (overlap) {
        // Buckets of the final tail of [grads | loss] go out while earlier
        // layers are still being differentiated; the loss slot, known
        // already, travels with the first bucket.
        int64_t pending = t.loss_slot_end;  // [k, pending) is final but not yet started
        t.net.backward(*t.be, t.params, dpred, t.grads, [&](int64_t k) {
          if (k == pending || (k > 0 && pending - k < bucket)) return;
          t.comm->start_mean(*t.be, t.reduce_buf, k, pending - k);
          pending = k;
        });
        DQ_CHECK(pending == 0, "UNet::backward ended without reporting offset 0 as final");
        t.comm->wait_all(*t.be);
      } else {
        t.net.backward(*t.be, t.params, dpred, t.grads);
        // The mean over one rank is the buffer itself; skipping the call
        // also spares a single GPU NCCL's device-wide synchronisation.
        if (world > 1) t.comm->allreduce_mean(t.reduce_buf);
      }
      t.be->download(t.status_slots, host_status);
      const float loss = host_status.f32()[0];
      const bool stop = host_status.f32()[1] > 0.0f;
      if (!std::isfinite(loss)) {
        // Every rank sees the same averaged loss and stops here together.
        all_ranks_fail = true;
        t.log_json({{"step", done}, {"event", "non-finite loss"}, {"loss", std::to_string(loss)}});
        fail("training loss became ", loss, " at step ", done,
             "; stopped before the weights were updated, the last checkpoint in ", t.out_dir,
             " is untouched (lower optim.lr?)");
      }
      // The averaged gradient is the same on every rank, so every rank
      // takes the same decision here. A skipped step leaves the weights and
      // Adam (its step count too) as they were.
      bool apply = true;
      if (t.scaler) {
        const float used = t.scaler->scale();
        apply = t.scaler->update(t.be->unscale_and_check(t.grads, 1.0f / used));
        if (!apply) {
          t.log_json({{"step", done},
                      {"event", "skipped step"},
                      {"loss_scale", used},
                      {"next_loss_scale", t.scaler->scale()},
                      {"skipped_steps", t.scaler->skipped_steps()}});
          std::snprintf(line, sizeof line,
                        "step %lld: non-finite gradients at loss scale %g; step skipped, loss "
                        "scale now %g",
                        static_cast<long long>(done), static_cast<double>(used),
                        static_cast<double>(t.scaler->scale()));
          t.say(line);
          t.tb_scalars(done, {{"train/loss_scale", t.scaler->scale()}});
        }
      }
      // Adam's update count (skipped steps excluded) sets its bias
      // correction and the learning-rate schedule.
      const int64_t updates = done - (t.scaler ? t.scaler->skipped_steps() : 0);
      const float lr_now = scheduled_lr(cfg, updates);
      if (apply) {
        AdamConfig step_cfg = cfg.optim;
        step_cfg.lr = lr_now;
        t.be->adam_step(t.params, t.grads, t.m, t.v, step_cfg, updates);
      }
      res.final_loss = loss;
      res.steps = done;
      if (t.scaler) {
        res.loss_scale = t.scaler->scale();
        res.skipped_steps = t.scaler->skipped_steps();
      }

      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
      const double sps = static_cast<double>((done - start) * G) / std::max(elapsed, 1e-9);
      const bool last = done == steps;
      if (done % cfg.log_every == 0 || last) {
        const double eta =
            elapsed / static_cast<double>(done - start) * static_cast<double>(steps - done);
        int n =
            std::snprintf(line, sizeof line, "step %lld/%lld  loss %.4e  %.1f samples/s  ETA %s",
                          static_cast<long long>(done), static_cast<long long>(steps), loss, sps,
                          format_duration(eta).c_str());
        const bool scheduled = cfg.lr_schedule != "constant" || cfg.warmup_steps > 0;
        if (scheduled && n > 0 && static_cast<size_t>(n) < sizeof line)
          n += std::snprintf(line + n, sizeof line - static_cast<size_t>(n), "  lr %.2e", lr_now);
        if (t.scaler && n > 0 && static_cast<size_t>(n) < sizeof line)
          std::snprintf(line + n, sizeof line - static_cast<size_t>(n),
                        "  loss scale %g (%lld skipped)", static_cast<double>(t.scaler->scale()),
                        static_cast<long long>(t.scaler->skipped_steps()));
        if (t.tty) {
          std::printf("\r\033[K%s", line);
          std::fflush(stdout);
        } else {
          t.say(line);
        }
        json entry = {{"step", done},
                      {"loss", loss},
                      {"lr", lr_now},
                      {"samples_per_s", sps},
                      {"elapsed_s", elapsed}};
        std::vector<std::pair<std::string, double>> scalars = {
            {"train/loss", loss}, {"train/lr", lr_now}, {"train/samples_per_s", sps}};
        if (t.scaler) {
          entry["loss_scale"] = t.scaler->scale();
          entry["skipped_steps"] = t.scaler->skipped_steps();
          scalars.emplace_back("train/loss_scale", t.scaler->scale());
        }
        t.log_json(entry);
        t.tb_scalars(done, scalars);
      }
      if (t.lead && ((cfg.validate_every > 0 && done % cfg.validate_every == 0) || last)) {
        const PatchMetrics pm = t.validate();
        res.val_mse = pm.mse;
        res.val_nrmse = pm.nrmse;
        res.val_hfen = pm.hfen;
        res.val_xsim = pm.xsim;
        std::snprintf(line, sizeof line,
                      "validation at step %lld: MSE %.4e ppm^2 (TKD %.4e), NRMSE %.1f %%, HFEN "
                      "%.1f %%, XSIM %.3f",
                      static_cast<long long>(done), pm.mse, res.tkd_val_mse, pm.nrmse, pm.hfen,
                      pm.xsim);
        t.say(line);
        t.log_json({{"step", done},
                    {"val_mse", pm.mse},
                    {"val_nrmse", pm.nrmse},
                    {"val_hfen", pm.hfen},
                    {"val_xsim", pm.xsim},
                    {"tkd_val_mse", res.tkd_val_mse}});
        t.tb_scalars(done, {{"val/mse", pm.mse},
                            {"val/nrmse", pm.nrmse},
                            {"val/hfen", pm.hfen},
                            {"val/xsim", pm.xsim},
                            {"val/tkd_mse", res.tkd_val_mse}});
        if (t.reference) {
          double rmse = 0;
          const Metrics rm = t.validate_reference(&rmse);
          std::snprintf(line, sizeof line,
                        "reference at step %lld: MSE %.4e ppm^2, NRMSE %.1f %%, HFEN %.1f %%, "
                        "XSIM %.3f",
                        static_cast<long long>(done), rmse, rm.nrmse, rm.hfen, rm.xsim);
          t.say(line);
          t.log_json({{"step", done},
                      {"ref_mse", rmse},
                      {"ref_nrmse", rm.nrmse},
                      {"ref_hfen", rm.hfen},
                      {"ref_xsim", rm.xsim}});
          t.tb_scalars(done, {{"ref/mse", rmse},
                              {"ref/nrmse", rm.nrmse},
                              {"ref/hfen", rm.hfen},
                              {"ref/xsim", rm.xsim}});
        }
      }
      if ((cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0) || last || stop) {
        const std::string path = t.save(done);
        if (t.lead) res.checkpoint = path;
      }
      if (stop && !last) {
        res.stop_signal = g_stop_signal != 0 ? static_cast<int>(g_stop_signal) : SIGTERM;
        t.log_json({{"step", done}, {"event", "stopped by signal"}, {"signal", res.stop_signal}});
        if (t.tty) std::printf("\n");
        std::snprintf(line, sizeof line,
                      "stopped by %s after step %lld of %lld; checkpoint written, continue with "
                      "--resume",
                      res.stop_signal == SIGINT ? "SIGINT" : "SIGTERM",
                      static_cast<long long>(done), static_cast<long long>(steps));
        t.say(line);
        return res;
      }
    }
    if (t.tty) std::printf("\n");
    if (t.be->device() == Device::cuda) {
      // Issue 8's peak device memory, and whether the arena sized at start
      // held it (growths: arenas added later, each a cudaMalloc mid-run).
      const DevicePoolStats ps = cuda_pool_stats(*t.be);
      t.log_json({{"step", steps},
                  {"event", "device memory"},
                  {"arena_bytes", ps.capacity},
                  {"peak_bytes", ps.peak},
                  {"growths", ps.growths}});
      std::snprintf(line, sizeof line,
                    "device memory (rank %d): peak %.2f GiB of a %.2f GiB pool%s", t.comm->rank(),
                    ps.peak / 1073741824.0, ps.capacity / 1073741824.0,
                    ps.growths == 0 ? ", all reserved at start"
                                    : "; the pool grew after the start (see device_pool.h)");
      std::printf("%s\n", line);
    }
    return res;
  } catch (const std::exception& e) {
    // A failure on one rank would leave the others blocked in the next
    // collective; say why here (main() will not get the chance) and end them all.
    if (t.comm->size() > 1 && !all_ranks_fail) {
      std::fprintf(stderr, "%sdeepqsm: rank %d: %s\n", t.tty ? "\n" : "", t.comm->rank(), e.what());
      std::fflush(stderr);
      t.comm->abort(1);
    }
    if (t.tty) std::printf("\n");
    throw;
  }
}

}  // namespace dq
