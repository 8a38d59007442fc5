#include "train/trainer.h"

#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/cpu/cpu_backend.h"
#include "core/error.h"
#include "core/philox.h"
#include "core/tkd.h"
#include "synth/synth.h"
#include "core/checkpoint.h"

namespace dq {

namespace {

// Held-out volumes come from their own index range, far from any training
// volume, so the two sets never share a shape.
constexpr int64_t kValidationVolumeBase = int64_t{1} << 40;
constexpr uint64_t kBatchPurpose = 1, kDropoutPurpose = 2, kInitPurpose = 3;

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  fail("train.device '", device,
       "': this build trains on the CPU backend only (the CUDA training path is not wired yet); "
       "use --device cpu");
}

// Copies patches idx[0..B) of a (N, P, P, P, 1) host set into a (B, P, P, P, 1) tensor.
void gather(const Tensor& set, const std::vector<int64_t>& idx, Tensor& out) {
  int64_t per = set.numel() / set.dim(0);
  for (size_t b = 0; b < idx.size(); ++b)
    std::copy(set.f32() + idx[b] * per, set.f32() + (idx[b] + 1) * per,
              out.f32() + static_cast<int64_t>(b) * per);
}

double mse(const float* a, const float* b, int64_t n) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
  return s / static_cast<double>(n);
}

std::string format_duration(double seconds) {
  long s = std::lround(std::max(0.0, seconds));
  char buf[32];
  std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, (s / 60) % 60, s % 60);
  return buf;
}

struct Trainer {
  const TrainConfig& cfg;
  const TrainOptions& opt;
  std::unique_ptr<Backend> be;
  UNet net;
  Tensor params, grads, m, v;          // on the backend's device, layout of net
  Tensor batch_field, batch_chi, pred, dpred;  // (B, P, P, P, 1)
  PatchSet train_set, val_set;
  std::ofstream log;
  std::string out_dir;
  const std::string config_json;

  Trainer(const TrainConfig& c, const TrainOptions& o)
      : cfg(c), opt(o), be(make_backend(c.device)), net(c.model), config_json(train_config_to_json(c)) {}

  // Network MSE over the held-out set, in batches of the training batch size.
  double validate() {
    int64_t n = val_set.field.dim(0), per = val_set.field.numel() / n;
    Shape one = val_set.field.shape();
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      Shape s{1, one[1], one[2], one[3], 1};
      Tensor host_x = val_set.field.slice(i * per, s);
      Tensor x = be->alloc(s), y = be->alloc(s), host_y = Tensor::zeros(s);
      be->upload(host_x, x);
      net.forward(*be, params, x, y, false);
      be->download(y, host_y);
      sum += mse(host_y.f32(), val_set.chi.f32() + i * per, per);
    }
    return sum / static_cast<double>(n);
  }

  void save(int64_t step) {
    Tensor hp = Tensor::zeros(params.shape()), hm = Tensor::zeros(m.shape()),
           hv = Tensor::zeros(v.shape());
    be->download(params, hp);
    be->download(m, hm);
    be->download(v, hv);
    std::string path = out_dir + "/checkpoint.h5";
    save_checkpoint(path, net, hp, &hm, &hv, step, config_json);
  }

  void log_json(const nlohmann::json& j) { log << j.dump() << "\n" << std::flush; }
};

}  // namespace

TrainResult run_training(const TrainConfig& cfg, const TrainOptions& opt) {
  Trainer t(cfg, opt);
  const int64_t steps = opt.steps_override > 0 ? opt.steps_override : cfg.steps;
  const int64_t P = cfg.data.patch_size, B = cfg.batch;
  t.net.check_input(Shape{B, P, P, P, 1});
  t.out_dir = opt.out_dir.empty() ? cfg.out_dir : opt.out_dir;
  std::filesystem::create_directories(t.out_dir);
  t.log.open(t.out_dir + "/log.jsonl", std::ios::app);
  if (!t.log) fail("cannot write ", t.out_dir, "/log.jsonl");
  const bool tty = isatty(fileno(stdout)) && !opt.quiet;
  auto say = [&](const std::string& s) {
    if (!opt.quiet) std::printf("%s%s\n", tty ? "\r\033[K" : "", s.c_str());
    std::fflush(stdout);
  };

  // Data: the training set and the held-out set, generated up front.
  auto t0 = std::chrono::steady_clock::now();
  t.train_set = generate_patches(cfg.data, cfg.seed, 0, cfg.train_volumes);
  t.val_set = generate_patches(cfg.data, cfg.seed, kValidationVolumeBase, cfg.val_volumes);
  double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const int64_t n_train = t.train_set.field.dim(0);
  Tensor tkd = tkd_patches(t.val_set.field, cfg.data.voxel_mm, cfg.data.b0_dir, kTkdThreshold,
                           cfg.data.dipole_k0);
  TrainResult res;
  res.tkd_val_mse = mse(tkd.f32(), t.val_set.chi.f32(), tkd.numel());
  std::vector<float> zeros(static_cast<size_t>(tkd.numel()), 0.0f);
  res.zero_val_mse = mse(zeros.data(), t.val_set.chi.f32(), tkd.numel());
  char line[256];
  std::snprintf(line, sizeof line,
                "data: %lld training and %lld held-out %lld^3 patches in %.1f s; "
                "held-out MSE of TKD (t = 0.19) %.3e, of chi = 0 %.3e ppm^2",
                static_cast<long long>(n_train), static_cast<long long>(t.val_set.field.dim(0)),
                static_cast<long long>(P), gen_s, res.tkd_val_mse, res.zero_val_mse);
  say(line);
  std::snprintf(line, sizeof line, "model: U-Net depth %d, base %d filters, %lld parameters; %s",
                cfg.model.depth, cfg.model.base_filters,
                static_cast<long long>(t.net.layout().count()), t.be->name().c_str());
  say(line);

  // Parameters and optimiser state.
  const Shape flat{t.net.layout().total()};
  Tensor host_params = Tensor::zeros(flat);
  t.net.init_he(host_params, key_for(cfg.seed, kInitPurpose));
  t.params = t.be->alloc(flat);
  t.be->upload(host_params, t.params);
  t.grads = t.be->alloc(flat);
  t.m = t.be->alloc(flat);
  t.v = t.be->alloc(flat);
  const Shape bs{B, P, P, P, 1};
  Tensor host_field = Tensor::zeros(bs), host_chi = Tensor::zeros(bs);
  t.batch_field = t.be->alloc(bs);
  t.batch_chi = t.be->alloc(bs);
  t.pred = t.be->alloc(bs);
  t.dpred = t.be->alloc(bs);

  auto start = std::chrono::steady_clock::now();
  std::vector<int64_t> idx(static_cast<size_t>(B));
  for (int64_t step = 0; step < steps; ++step) {
    // Batch: B patches drawn uniformly (with replacement) from a counter RNG
    // keyed by (seed, step), so any step's batch is known without replaying.
    uint64_t bkey = key_for(key_for(cfg.seed, kBatchPurpose), static_cast<uint64_t>(step));
    for (int64_t b = 0; b < B; ++b)
      idx[static_cast<size_t>(b)] = std::min<int64_t>(
          n_train - 1, static_cast<int64_t>(philox_uniform(bkey, static_cast<uint64_t>(b)) * n_train));
    gather(t.train_set.field, idx, host_field);
    gather(t.train_set.chi, idx, host_chi);
    t.be->upload(host_field, t.batch_field);
    t.be->upload(host_chi, t.batch_chi);

    uint64_t dkey = key_for(key_for(cfg.seed, kDropoutPurpose), static_cast<uint64_t>(step));
    t.net.forward(*t.be, t.params, t.batch_field, t.pred, true, dkey);
    float loss = t.be->mse_loss(t.pred, t.batch_chi, &t.dpred);
    if (!std::isfinite(loss))
      fail("training loss became ", loss, " at step ", step + 1,
           "; stopped without overwriting the last checkpoint (lower optim.lr?)");
    t.net.backward(*t.be, t.params, t.dpred, t.grads);
    t.be->adam_step(t.params, t.grads, t.m, t.v, cfg.optim, step + 1);
    res.final_loss = loss;
    res.steps = step + 1;

    const int64_t done = step + 1;
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    double sps = static_cast<double>(done * B) / elapsed;
    bool last = done == steps;
    if (done % std::max<int64_t>(1, cfg.log_every) == 0 || last) {
      std::snprintf(line, sizeof line, "step %lld/%lld  loss %.4e  %.1f samples/s  ETA %s",
                    static_cast<long long>(done), static_cast<long long>(steps), loss, sps,
                    format_duration(elapsed / static_cast<double>(done) * static_cast<double>(steps - done)).c_str());
      if (tty) {
        std::printf("\r\033[K%s", line);
        std::fflush(stdout);
      } else if (!opt.quiet) {
        say(line);
      }
      t.log_json({{"step", done}, {"loss", loss}, {"samples_per_s", sps}, {"elapsed_s", elapsed}});
    }
    if ((cfg.validate_every > 0 && done % cfg.validate_every == 0) || last) {
      res.val_mse = t.validate();
      std::snprintf(line, sizeof line, "validation at step %lld: MSE %.4e ppm^2 (TKD %.4e)",
                    static_cast<long long>(done), res.val_mse, res.tkd_val_mse);
      say(line);
      t.log_json({{"step", done}, {"val_mse", res.val_mse}, {"tkd_val_mse", res.tkd_val_mse}});
    }
    if ((cfg.checkpoint_every > 0 && done % cfg.checkpoint_every == 0) || last) {
      t.save(done);
      res.checkpoint = t.out_dir + "/checkpoint.h5";
    }
  }
  return res;
}

}  // namespace dq
