// The training loop (train/trainer.h) as its stages: set-up (run folder,
// initial state, data, report), then per step draw_batch, train_step,
// report_step, validate_and_report and the checkpoint. The run folder's
// files are train/checkpoints.h, the metrics train/validation.h, the stop
// request train/stop_signals.h.
#include "train/trainer.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdarg>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/error.h"
#include "core/io/output_files.h"
#include "core/nn/checkpoint.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/loss_scale.h"
#include "core/nn/philox.h"
#include "core/parallel.h"
#include "core/qsm/tkd.h"
#include "cuda/check.h"
#include "cuda/nn/cuda_backend.h"
#include "synth/stream.h"  // kValidationVolumeBase, shared with the stream
#include "synth/synth.h"
#include "train/comm.h"
#include "train/patch_source.h"
#include "train/stop_signals.h"
#include "train/tensorboard.h"
#include "train/validation.h"

namespace dq {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr uint64_t kBatchPurpose = 1, kDropoutPurpose = 2, kInitPurpose = 3;

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

// printf into a piece of a line of the log (at most 511 characters).
__attribute__((format(printf, 1, 2))) std::string line_of(const char* format, ...) {
  char line[512];
  va_list args;
  va_start(args, format);
  std::vsnprintf(line, sizeof line, format, args);
  va_end(args);
  return line;
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
  std::string log_path;
  std::unique_ptr<TensorBoardWriter> tb;
  std::string out_dir;
  const std::string config_json;
  bool lead = true;  // rank 0: validates, logs, writes checkpoints
  bool tty = false;
  bool all_ranks_fail = false;  // a failure every rank reaches together (no abort needed)
  bool made_folder = false;     // this run created out_dir (rank 0)
  bool set_up_done = false;     // the inputs passed; the folder is the run's now

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
    if (!lead) return;
    // A line that cannot be written (full disk, a device) stops the run
    // rather than leaving a log that silently ends early.
    log << j.dump() << "\n" << std::flush;
    if (!log) fail(log_path, ": cannot write to the training log (disk full?)");
  }
  void tb_scalars(int64_t step, const std::vector<std::pair<std::string, double>>& values) {
    if (tb) tb->scalars(step, values);
  }

  Tensor to_host(const Tensor& t) {
    Tensor h = Tensor::zeros(t.shape());
    be->download(t, h);
    return h;
  }

  // Rank 0 writes; every rank first agrees that the weights are identical,
  // which is the data-parallel invariant (comm.h) and cheap to check here.
  // Returns the path of checkpoint.h5 (rank 0; "" elsewhere).
  std::string save(int64_t step) {
    const Tensor hp = to_host(params);
    uint64_t mine = params_checksum(net, hp), lead_sum = mine;
    comm->broadcast_bytes(&lead_sum, sizeof lead_sum, 0);
    if (lead_sum != mine)
      fail("rank ", comm->rank(), " holds different weights than rank 0 at step ", step,
           " (data-parallel ranks diverged)");
    const Tensor hm = to_host(m), hv = to_host(v);
    // A step whose loss was finite can still push a weight to inf (an
    // absurd learning rate): every rank holds the same weights, so every
    // rank stops here together, and nothing non-finite is written.
    if (const std::string bad = first_non_finite(net, hp, &hm, &hv); !bad.empty()) {
      all_ranks_fail = true;
      log_json({{"step", step}, {"event", "non-finite weights"}, {"where", bad}});
      fail("training diverged: after step ", step, " the weights are not finite (", bad,
           "); no checkpoint was written, the last one in ", out_dir,
           " is untouched (lower optim.lr)");
    }
    if (!lead) return "";
    TrainingState st;
    st.seed = cfg.seed;
    st.data_position = source->position(step - 1);
    if (scaler) st.loss_scale = scaler->state();
    const std::string path =
        write_run_checkpoint(out_dir, cfg.keep_checkpoints, net, hp, hm, hv, step, config_json, st);
    log_json({{"step", step}, {"event", "checkpoint"}, {"path", path}});
    return (fs::path(out_dir) / "checkpoint.h5").string();
  }
};

// ------------------------------------------------------------------ set-up

// The batch split over the ranks, the output folder, and (rank 0) the files
// the run reads, checked before the folder is made, then the folder, the
// log and the TensorBoard writer.
void open_run_folder(Trainer& t) {
  const TrainConfig& cfg = t.cfg;
  const int world = t.comm->size();
  const int64_t P = cfg.data.patch_size;
  if (cfg.batch % world != 0)
    fail("train.batch ", cfg.batch, " does not split evenly over ", world,
         " ranks; make it a multiple of ", world);
  t.net.check_input(Shape{cfg.batch / world, P, P, P, 1});
  t.out_dir = t.opt.out_dir.empty() ? cfg.out_dir : t.opt.out_dir;
  if (!t.lead) return;
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
  t.made_folder = t.lead && !fs::exists(t.out_dir);
  fs::create_directories(t.out_dir);
  t.log_path = (fs::path(t.out_dir) / cfg.log_file).string();
  check_replaceable(t.log_path);  // appended to, so a FIFO or a device is refused as for outputs
  t.log.open(t.log_path, std::ios::app);
  if (!t.log) fail("cannot write ", t.log_path);
  if (cfg.tensorboard) t.tb = std::make_unique<TensorBoardWriter>(t.out_dir + "/tb");
}

// Weights and Adam moments on the host, as the run starts from them.
struct HostState {
  Tensor params, m, v;
  int64_t step = 0;
};

// --resume: the newest checkpoint, read by rank 0 and broadcast (with its
// step and loss scale), so ranks cannot disagree.
void resume_state(Trainer& t, HostState& s) {
  const TrainConfig& cfg = t.cfg;
  LossScaleState scale_state;
  if (t.lead) {
    const std::string path = newest_checkpoint(t.out_dir);
    if (path.empty())
      fail("--resume: no checkpoint in ", t.out_dir, " (expected checkpoint-<step>.h5 files)");
    CheckpointData ck;
    try {
      ck = load_checkpoint(path);
    } catch (const Error& e) {
      // A damaged newest file: name the newest older one that loads, and how
      // to resume from it (the damaged one is kept for inspection).
      const std::vector<std::string> older = step_checkpoint_paths(t.out_dir);
      for (auto it = older.rbegin(); it != older.rend(); ++it) {
        if (*it == path) continue;
        try {
          load_checkpoint(*it);
        } catch (const Error&) {
          continue;
        }
        fail("--resume: ", e.what(), "; the older ", *it,
             " loads: move the damaged file aside (mv '", path, "' '", path,
             ".damaged') and run --resume again to continue from it");
      }
      throw;
    }
    if (ck.version < 2 || !ck.adam_m.defined())
      fail("--resume: ", path, " holds no optimiser state (version ", ck.version,
           " or weights only); it can seed inference, not continue a run");
    check_resumable(path, ck.config_json, cfg);
    s.params = ck.params;
    s.m = ck.adam_m;
    s.v = ck.adam_v;
    s.step = ck.step;
    scale_state = ck.state.loss_scale;
    // check_resumable has matched train.loss_scale and the precision, so
    // a scaler here with no state stored means a damaged or foreign file.
    if (t.scaler && scale_state.scale == 0.0f)
      fail("--resume: ", path, " holds no loss-scale state, but train.loss_scale \"",
           cfg.loss_scale, "\" with precision \"", cfg.precision, "\" scales the loss");
    t.log_json({{"step", s.step}, {"event", "resume"}, {"path", path}});
    t.say("resuming from " + path + " at step " + std::to_string(s.step));
  }
  t.comm->broadcast_bytes(&s.step, sizeof s.step, 0);
  t.comm->broadcast_bytes(&scale_state, sizeof scale_state, 0);
  if (t.scaler) t.scaler->restore(scale_state);
}

// train.init_from: rank 0 reads the weights; the broadcast in
// place_state hands them to the rest. Adam starts from zero.
void init_from_weights(Trainer& t, HostState& s) {
  const TrainConfig& cfg = t.cfg;
  if (!t.lead) return;
  CheckpointData ck = load_checkpoint(cfg.init_from, /*weights_only=*/true);
  if (!same_architecture(ck.model, cfg.model))
    fail("train.init_from: ", cfg.init_from, " holds a U-Net of ", describe_architecture(ck.model),
         "; the config's model is ", describe_architecture(cfg.model));
  s.params = ck.params;
  t.log_json({{"step", 0}, {"event", "init"}, {"path", cfg.init_from}});
  t.say("initialised from the weights in " + cfg.init_from + " (Adam moments start at zero)");
}

// The state on the device, the same on every rank, and the buffer the
// all-reduce averages.
void place_state(Trainer& t, const HostState& s) {
  const Shape flat{t.net.layout().total()};
  t.params = t.be->alloc(flat);
  t.m = t.be->alloc(flat);
  t.v = t.be->alloc(flat);
  t.be->upload(s.params, t.params);
  t.be->upload(s.m, t.m);
  t.be->upload(s.v, t.v);
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
}

// Parameters and optimiser state: fresh from the seed, from the newest
// checkpoint, or weights from train.init_from. Returns the first step.
int64_t initial_state(Trainer& t) {
  const Shape flat{t.net.layout().total()};
  HostState s{Tensor::zeros(flat), Tensor::zeros(flat), Tensor::zeros(flat)};
  t.scaler = make_loss_scaler(t.cfg);
  if (t.opt.resume)
    resume_state(t, s);
  else if (!t.cfg.init_from.empty())
    init_from_weights(t, s);
  else
    t.net.init_he(s.params, key_for(t.cfg.seed, kInitPurpose));
  place_state(t, s);
  return s.step;
}

// The patch source, and (rank 0, the only one that validates) the held-out
// set with TKD's and chi = 0's scores on it, and the reference pair.
void prepare_data(Trainer& t, TrainResult& res, int64_t start, int64_t steps) {
  const TrainConfig& cfg = t.cfg;
  const auto t0 = std::chrono::steady_clock::now();
  t.source = make_patch_source(cfg);
  if (start < steps) t.source->prepare(start);
  if (!t.lead) return;
  t.val_set = generate_patches(cfg.data, cfg.seed, kValidationVolumeBase, cfg.val_volumes);
  const Tensor tkd = tkd_patches(t.val_set.field, cfg.data.voxel_mm, cfg.data.b0_dir, kTkdThreshold,
                                 cfg.data.dipole_k0);
  const PatchMetrics tm = patch_metrics(tkd.f32(), t.val_set.chi, cfg.data);
  res.tkd_val_mse = tm.mse;
  std::vector<float> zeros(static_cast<size_t>(tkd.numel()), 0.0f);
  res.zero_val_mse = mse(zeros.data(), t.val_set.chi.f32(), tkd.numel());
  const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  t.say(
      line_of("data: %s; %lld held-out %lld^3 patches; ready in %.1f s. Held-out TKD "
              "(t = 0.19): MSE %.3e ppm^2, NRMSE %.1f %%, HFEN %.1f %%, XSIM %.3f; chi = 0: "
              "MSE %.3e",
              t.source->describe().c_str(), static_cast<long long>(t.val_set.field.dim(0)),
              static_cast<long long>(cfg.data.patch_size), gen_s, tm.mse, tm.nrmse, tm.hfen,
              tm.xsim, res.zero_val_mse));
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

// The model, device, ranks, all-reduce and loss scale, one line each.
void report_setup(const Trainer& t) {
  const TrainConfig& cfg = t.cfg;
  const int world = t.comm->size();
  std::string device = t.be->name();
  if (t.be->device() == Device::cpu)
    device += ", " + std::to_string(cpu_threads()) + (cpu_threads() == 1 ? " thread" : " threads");
  t.say(line_of(
      "model: U-Net depth %d, base %d filters, %lld parameters; %s; %s; global batch "
      "%lld (%lld per rank)",
      cfg.model.depth, cfg.model.base_filters, static_cast<long long>(t.net.layout().count()),
      device.c_str(), t.comm->name().c_str(), static_cast<long long>(cfg.batch),
      static_cast<long long>(cfg.batch / world)));
  if (world > 1) {
    t.say(cfg.allreduce_overlap
              ? "gradient all-reduce: overlapped with the backward pass, " +
                    std::to_string(cfg.allreduce_bucket_kb) + " KB buckets"
              : std::string("gradient all-reduce: one call after the backward pass"));
  }
  if (t.scaler)
    t.say(line_of("loss scale: %s, %g now, %lld steps skipped so far",
                  cfg.loss_scale == "static" ? "static" : "dynamic",
                  static_cast<double>(t.scaler->scale()),
                  static_cast<long long>(t.scaler->skipped_steps())));
}

// Everything up to the loop; returns the first step to run.
int64_t set_up(Trainer& t, TrainResult& res, int64_t steps) {
  open_run_folder(t);
  const int64_t start = initial_state(t);
  res.resumed_from = start;
  prepare_data(t, res, start, steps);
  report_setup(t);
  t.set_up_done = true;
  return start;
}

// ------------------------------------------------------------------ a step

// This rank's share of a batch, on the host and on the device.
struct StepBuffers {
  Tensor host_field, host_chi, host_status;
  Tensor field, chi, pred, dpred;  // on the backend's device
  std::vector<int64_t> idx;

  StepBuffers(Backend& be, const Shape& bs)
      : host_field(Tensor::zeros(bs)),
        host_chi(Tensor::zeros(bs)),
        host_status(Tensor::zeros({2})),
        field(be.alloc(bs)),
        chi(be.alloc(bs)),
        pred(be.alloc(bs)),
        dpred(be.alloc(bs)),
        idx(static_cast<size_t>(bs[0])) {}
};

// The global batch: G patches drawn uniformly (with replacement) from a
// counter RNG keyed by (seed, step); rank r takes draws [rB, (r+1)B). With
// one rank that is the whole batch, so W ranks x B see exactly the patches
// of 1 rank x WB. Leaves this rank's B patches on the device.
void draw_batch(Trainer& t, int64_t step, StepBuffers& b) {
  const int rank = t.comm->rank();
  const int64_t B = static_cast<int64_t>(b.idx.size());
  if (t.source->prepare(step))
    t.log_json({{"step", step}, {"event", "data"}, {"block", t.source->position(step)}});
  const int64_t n_train = t.source->size();
  const uint64_t bkey = key_for(key_for(t.cfg.seed, kBatchPurpose), static_cast<uint64_t>(step));
  for (int64_t i = 0; i < B; ++i) {
    const uint64_t draw = static_cast<uint64_t>(rank * B + i);
    b.idx[static_cast<size_t>(i)] =
        t.source->deals_batches()
            ? rank * B + i  // the stream dealt the global batch; this rank's slice
            : std::min<int64_t>(n_train - 1, static_cast<int64_t>(philox_uniform(bkey, draw) *
                                                                  static_cast<float>(n_train)));
  }
  t.source->gather(b.idx, b.host_field.f32(), b.host_chi.f32());
  t.be->upload(b.host_field, b.field);
  t.be->upload(b.host_chi, b.chi);
}

// The gradient of the local loss, averaged over the ranks with the loss and
// the stop request: in buckets while the backward pass runs (overlap), or
// in one call after it.
void backward_and_reduce(Trainer& t, StepBuffers& b) {
  const int world = t.comm->size();
  // One process has nothing to reduce, so nothing to overlap.
  const bool overlap = t.cfg.allreduce_overlap && world > 1;
  if (!overlap) {
    t.net.backward(*t.be, t.params, b.dpred, t.grads);
    // The mean over one rank is the buffer itself; skipping the call
    // also spares a single GPU NCCL's device-wide synchronisation.
    if (world > 1) t.comm->allreduce_mean(t.reduce_buf);
    return;
  }
  // Buckets of the final tail of [grads | loss] go out while earlier
  // layers are still being differentiated; the loss slot, known
  // already, travels with the first bucket.
  const int64_t bucket = t.cfg.allreduce_bucket_kb * 1024 / static_cast<int64_t>(sizeof(float));
  int64_t pending = t.loss_slot_end;  // [k, pending) is final but not yet started
  t.net.backward(*t.be, t.params, b.dpred, t.grads, [&](int64_t k) {
    if (k == pending || (k > 0 && pending - k < bucket)) return;
    t.comm->start_mean(*t.be, t.reduce_buf, k, pending - k);
    pending = k;
  });
  DQ_CHECK(pending == 0, "UNet::backward ended without reporting offset 0 as final");
  t.comm->wait_all(*t.be);
}

// What a step leaves for the reports.
struct StepOutcome {
  float loss = 0;     // mean over the global batch
  bool stop = false;  // some rank was asked to stop
  float lr = 0;       // the learning rate of this step's update
};

// With a loss scaler, unscales the gradient and decides whether the step
// may update (the averaged gradient is the same on every rank, so every
// rank decides the same). A skipped step leaves the weights and Adam (its
// step count too) as they were.
bool unscale_gradients(Trainer& t, int64_t done) {
  if (!t.scaler) return true;
  const float used = t.scaler->scale();
  const bool apply = t.scaler->update(t.be->unscale_and_check(t.grads, 1.0f / used));
  if (apply) return true;
  t.log_json({{"step", done},
              {"event", "skipped step"},
              {"loss_scale", used},
              {"next_loss_scale", t.scaler->scale()},
              {"skipped_steps", t.scaler->skipped_steps()}});
  t.say(
      line_of("step %lld: non-finite gradients at loss scale %g; step skipped, loss "
              "scale now %g",
              static_cast<long long>(done), static_cast<double>(used),
              static_cast<double>(t.scaler->scale())));
  t.tb_scalars(done, {{"train/loss_scale", t.scaler->scale()}});
  return false;
}

// Forward, loss, backward, all-reduce and the Adam update of one step on the
// batch in `b`.
StepOutcome train_step(Trainer& t, int64_t step, StepBuffers& b) {
  const int64_t done = step + 1;
  const int64_t B = static_cast<int64_t>(b.idx.size());
  // Dropout masks are keyed by step, and each rank's samples take the
  // masks of their place in the global batch, so W ranks x B draw
  // exactly the masks of 1 rank x WB.
  const uint64_t dkey = key_for(key_for(t.cfg.seed, kDropoutPurpose), static_cast<uint64_t>(step));
  t.net.forward(*t.be, t.params, b.field, b.pred, true, dkey, t.comm->rank() * B);
  const float local_loss = t.be->mse_loss(b.pred, b.chi, &b.dpred);
  // Each rank's loss is the mean over its B patches; the mean over ranks
  // of equal-sized shards is the global batch's mean, and so is the
  // averaged gradient.
  t.be->fill(t.loss_slot, local_loss);
  // A stop request (any rank's signal) is averaged with the gradients,
  // so every rank learns of it after the same step.
  Tensor stop_slot = t.status_slots.slice(1, Shape{1});
  t.be->fill(stop_slot, stop_signal() != 0 ? 1.0f : 0.0f);
  if (t.scaler) t.be->scale(b.dpred, t.scaler->scale());
  backward_and_reduce(t, b);
  t.be->download(t.status_slots, b.host_status);
  StepOutcome out;
  out.loss = b.host_status.f32()[0];
  out.stop = b.host_status.f32()[1] > 0.0f;
  if (!std::isfinite(out.loss)) {
    // Every rank sees the same averaged loss and stops here together.
    t.all_ranks_fail = true;
    t.log_json({{"step", done}, {"event", "non-finite loss"}, {"loss", std::to_string(out.loss)}});
    fail("training loss became ", out.loss, " at step ", done,
         "; stopped before the weights were updated, the last checkpoint in ", t.out_dir,
         " is untouched (lower optim.lr?)");
  }
  const bool apply = unscale_gradients(t, done);
  // Adam's update count (skipped steps excluded) sets its bias
  // correction and the learning-rate schedule.
  const int64_t updates = done - (t.scaler ? t.scaler->skipped_steps() : 0);
  out.lr = scheduled_lr(t.cfg, updates);
  if (apply) {
    AdamConfig step_cfg = t.cfg.optim;
    step_cfg.lr = out.lr;
    t.be->adam_step(t.params, t.grads, t.m, t.v, step_cfg, updates);
  }
  return out;
}

// ------------------------------------------------------------------ reports

// Where the loop is, for the progress line and the ETA.
struct Progress {
  int64_t start = 0, steps = 0;
  std::chrono::steady_clock::time_point t_start;
};

// The progress line (rewritten in place on a terminal), the log entry and
// the TensorBoard scalars of a finished step.
void report_step(Trainer& t, const Progress& p, int64_t done, const StepOutcome& s) {
  const TrainConfig& cfg = t.cfg;
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - p.t_start).count();
  const double sps = static_cast<double>((done - p.start) * cfg.batch) / std::max(elapsed, 1e-9);
  if (done % cfg.log_every != 0 && done != p.steps) return;
  const double eta =
      elapsed / static_cast<double>(done - p.start) * static_cast<double>(p.steps - done);
  std::string line =
      line_of("step %lld/%lld  loss %.4e  %.1f samples/s  ETA %s", static_cast<long long>(done),
              static_cast<long long>(p.steps), s.loss, sps, format_duration(eta).c_str());
  if (cfg.lr_schedule != "constant" || cfg.warmup_steps > 0) line += line_of("  lr %.2e", s.lr);
  if (t.scaler)
    line += line_of("  loss scale %g (%lld skipped)", static_cast<double>(t.scaler->scale()),
                    static_cast<long long>(t.scaler->skipped_steps()));
  if (t.tty) {
    std::printf("\r\033[K%s", line.c_str());
    std::fflush(stdout);
  } else {
    t.say(line);
  }
  json entry = {{"step", done},
                {"loss", s.loss},
                {"lr", s.lr},
                {"samples_per_s", sps},
                {"elapsed_s", elapsed}};
  std::vector<std::pair<std::string, double>> scalars = {
      {"train/loss", s.loss}, {"train/lr", s.lr}, {"train/samples_per_s", sps}};
  if (t.scaler) {
    entry["loss_scale"] = t.scaler->scale();
    entry["skipped_steps"] = t.scaler->skipped_steps();
    scalars.emplace_back("train/loss_scale", t.scaler->scale());
  }
  t.log_json(entry);
  t.tb_scalars(done, scalars);
}

// Rank 0: the held-out patches and the reference pair, said, logged and
// written to TensorBoard.
void validate_and_report(Trainer& t, TrainResult& res, int64_t done) {
  const PatchMetrics pm = validate_patches(*t.be, t.eval_net, t.params, t.val_set, t.cfg.data);
  res.val_mse = pm.mse;
  res.val_nrmse = pm.nrmse;
  res.val_hfen = pm.hfen;
  res.val_xsim = pm.xsim;
  t.say(
      line_of("validation at step %lld: MSE %.4e ppm^2 (TKD %.4e), NRMSE %.1f %%, HFEN "
              "%.1f %%, XSIM %.3f",
              static_cast<long long>(done), pm.mse, res.tkd_val_mse, pm.nrmse, pm.hfen, pm.xsim));
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
  if (!t.reference) return;
  double rmse = 0;
  const Metrics rm =
      validate_reference(*t.be, t.ref_net, t.cfg.model, t.params, *t.reference, &rmse);
  t.say(
      line_of("reference at step %lld: MSE %.4e ppm^2, NRMSE %.1f %%, HFEN %.1f %%, "
              "XSIM %.3f",
              static_cast<long long>(done), rmse, rm.nrmse, rm.hfen, rm.xsim));
  t.log_json({{"step", done},
              {"ref_mse", rmse},
              {"ref_nrmse", rm.nrmse},
              {"ref_hfen", rm.hfen},
              {"ref_xsim", rm.xsim}});
  t.tb_scalars(
      done,
      {{"ref/mse", rmse}, {"ref/nrmse", rm.nrmse}, {"ref/hfen", rm.hfen}, {"ref/xsim", rm.xsim}});
}

// A stop request after step `done`: says how to continue.
void report_stop(Trainer& t, TrainResult& res, int64_t done, int64_t steps) {
  const int signal = stop_signal();
  res.stop_signal = signal != 0 ? signal : SIGTERM;
  t.log_json({{"step", done}, {"event", "stopped by signal"}, {"signal", res.stop_signal}});
  if (t.tty) std::printf("\n");
  t.say(
      line_of("stopped by %s after step %lld of %lld; checkpoint written, continue with "
              "--resume",
              res.stop_signal == SIGINT ? "SIGINT" : "SIGTERM", static_cast<long long>(done),
              static_cast<long long>(steps)));
}

// Issue 8's peak device memory, and whether the arena sized at start held it
// (growths: arenas added later, each a cudaMalloc mid-run).
void report_device_memory(Trainer& t, int64_t steps) {
  if (t.be->device() != Device::cuda) return;
  const DevicePoolStats ps = cuda_pool_stats(*t.be);
  t.log_json({{"step", steps},
              {"event", "device memory"},
              {"arena_bytes", ps.capacity},
              {"peak_bytes", ps.peak},
              {"growths", ps.growths}});
  std::printf("%s\n",
              line_of("device memory (rank %d): peak %.2f GiB of a %.2f GiB pool%s", t.comm->rank(),
                      ps.peak / 1073741824.0, ps.capacity / 1073741824.0,
                      ps.growths == 0 ? ", all reserved at start"
                                      : "; the pool grew after the start (see device_pool.h)")
                  .c_str());
}

// The loop from `start`; returns early, with a checkpoint, on a stop request.
void train_steps(Trainer& t, TrainResult& res, int64_t start, int64_t steps) {
  const TrainConfig& cfg = t.cfg;
  const int64_t P = cfg.data.patch_size, B = cfg.batch / t.comm->size();
  StepBuffers buffers(*t.be, Shape{B, P, P, P, 1});
  const Progress progress{start, steps, std::chrono::steady_clock::now()};
  for (int64_t step = start; step < steps; ++step) {
    const int64_t done = step + 1;
    const bool last = done == steps;
    draw_batch(t, step, buffers);
    const StepOutcome s = train_step(t, step, buffers);
    res.final_loss = s.loss;
    res.steps = done;
    if (t.scaler) {
      res.loss_scale = t.scaler->scale();
      res.skipped_steps = t.scaler->skipped_steps();
    }
    report_step(t, progress, done, s);
    if (t.lead && ((cfg.validate_every > 0 && done % cfg.validate_every == 0) || last))
      validate_and_report(t, res, done);
    if ((cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0) || last || s.stop) {
      const std::string path = t.save(done);
      if (t.lead) res.checkpoint = path;
    }
    if (s.stop && !last) {
      report_stop(t, res, done, steps);
      return;
    }
  }
  if (t.tty) std::printf("\n");
  report_device_memory(t, steps);
}

}  // namespace

TrainResult run_training(const TrainConfig& cfg, const TrainOptions& opt) {
  const StopSignals stop_signals;
  Trainer t(cfg, opt);
  TrainResult res;
  res.rank = t.comm->rank();
  res.world = t.comm->size();
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
    train_steps(t, res, start, steps);
    return res;
  } catch (const std::exception& e) {
    // A failure on one rank would leave the others blocked in the next
    // collective; say why here (main() will not get the chance) and end them all.
    if (t.comm->size() > 1 && !t.all_ranks_fail) {
      std::fprintf(stderr, "%sdeepqsm: rank %d: %s\n", t.tty ? "\n" : "", t.comm->rank(), e.what());
      std::fflush(stderr);
      t.comm->abort(1);
    }
    if (t.tty) std::printf("\n");
    // Inputs that failed set-up (a bad patch file, init_from, the reference
    // pair) leave no folder behind with an empty log: the folder is removed
    // when this run made it and nothing was trained into it.
    if (t.made_folder && !t.set_up_done) {
      t.log.close();
      t.tb.reset();
      std::error_code ec;
      fs::remove_all(t.out_dir, ec);
    }
    throw;
  }
}

}  // namespace dq
