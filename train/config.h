// The training configuration, read from JSON. Every key has a default
// (docs/config.md lists them); unknown keys and wrong types are refused with
// the key's path ("optim.lr: expected a number, got a string").
#pragma once
#include <cstdint>
#include <string>

#include "core/nn/backend.h"
#include "core/nn/unet.h"
#include "synth/recipe.h"

namespace dq {

struct TrainConfig {
  std::string name = "deepqsm";
  UNetConfig model;
  Recipe data;                       // "data": the generator recipe
  std::string source = "generator";  // "generator" | "stream" | "hdf5": where patches come from
  std::string patch_file;            // source "hdf5": datasets field, chi (N, P, P, P[, 1])
  int64_t refresh_every = 0;         // steps; > 0: fresh train_volumes every this many steps
  int64_t train_volumes = 8;         // volumes of the training set (per refresh); stream: 0 = fresh
  int64_t val_volumes = 1;           // held-out volumes, from their own seed range
  AdamConfig optim;
  // Learning-rate schedule over Adam's update count (optim.schedule etc.):
  // optim.lr after a linear warm-up, held ("constant", the paper) or
  // cosine-decayed to lr_min over decay_steps updates and held there.
  std::string lr_schedule = "constant";  // "constant" | "cosine"
  float lr_min = 0.0f;
  int64_t warmup_steps = 0;
  int64_t decay_steps = 0;         // cosine: updates after the warm-up (>= 1)
  std::string device = "cpu";      // "cpu" | "gpu"
  std::string precision = "fp32";  // "fp32" | "tf32" | "bf16" | "fp16"
  // Loss scaling (core/nn/loss_scale.h): "auto" (dynamic for fp16, off
  // otherwise) | "dynamic" | "static" (loss_scale_init, never changed) | "off".
  std::string loss_scale = "auto";
  float loss_scale_init = 65536.0f;           // initial (or static) scale
  int64_t loss_scale_growth_interval = 2000;  // clean steps before the scale doubles
  // Gradient all-reduce in buckets started during the backward pass
  // (train/comm.h); results are the same either way. A bucket starts once
  // the final tail reaches the size. UNet::backward reports a final tail
  // once per level, so buckets are whole levels; 1 MiB only merges the
  // small head-side ones, since every call costs tens of microseconds of
  // latency whatever its size. The paper U-Net (5.6M parameters, 22.6 MB)
  // then goes out in ~5 buckets, and only enc0's waits for the backward's end.
  bool allreduce_overlap = true;
  int64_t allreduce_bucket_kb = 1024;
  // GPU: time cuDNN's candidate engines per layer shape and keep the fastest
  // (true), or take the heuristics' first acceptable one (false). Timing can
  // pick differently from run to run, so a resumed GPU run matches an
  // uninterrupted one bit for bit only with false. No effect on the CPU.
  bool autotune = true;
  int64_t steps = 200;
  int64_t batch = 4;               // global batch, split evenly over the ranks
  int64_t checkpoint_every = 100;  // steps; 0 = only at the end
  int64_t keep_checkpoints = 2;    // newest checkpoint-<step>.h5 files kept
  int64_t validate_every = 50;     // steps; 0 = only at the end
  int64_t log_every = 10;          // steps between terminal lines
  uint64_t seed = 1;
  // Fine-tuning: start from this model or checkpoint's weights (same
  // architecture) instead of He initialisation; Adam moments start at zero.
  std::string init_from;
  std::string out_dir = "runs/deepqsm";
  std::string log_file = "log.jsonl";  // JSON lines, relative to out_dir
  bool tensorboard = true;             // event files in out_dir/tb
  // Optional evaluation pair (NIfTI paths; evaluation only, never training).
  std::string reference_field, reference_chi, reference_mask;
};

// The learning rate of Adam's update number `update` (1-based, counting
// applied updates only, like Adam's bias correction).
float scheduled_lr(const TrainConfig& cfg, int64_t update);

// Parses and validates a config. `source` names the file in error messages.
TrainConfig parse_train_config(const std::string& json_text, const std::string& source);
TrainConfig load_train_config(const std::string& path);
// What only the device decides, checked once the command line's --device is
// applied (a config may name bf16 for a GPU run and still say device "cpu"):
// the CPU backend trains in fp32 only.
void check_device_precision(const TrainConfig& cfg);
// The embedded default (configs/smoke-cpu.json's content), used when no
// --config is given.
const char* default_train_config_json();
std::string train_config_to_json(const TrainConfig& cfg);  // all keys, pretty-printed

}  // namespace dq
