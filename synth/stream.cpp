#include "synth/stream.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>

#include "core/error.h"
#include "core/nn/philox.h"
#include "cuda/check.h"
#include "synth/brain.h"
#include "synth/synth_gpu.h"

namespace dq {

namespace {

// Fisher-Yates permutation of 0..m-1 keyed by the group, drawn from the back
// as in draw_shapes.
std::vector<int64_t> group_permutation(const StreamConfig& cfg, int64_t group) {
  const int64_t m = cfg.group_volumes() * cfg.recipe.patches_per_volume;
  std::vector<int64_t> perm(static_cast<size_t>(m));
  for (int64_t i = 0; i < m; ++i) perm[static_cast<size_t>(i)] = i;
  const uint64_t key = key_for(key_for(cfg.seed, kStreamPurpose), static_cast<uint64_t>(group));
  for (int64_t pos = m - 1, t = 0; pos > 0; --pos, ++t) {
    const double u = philox_uniform(key, static_cast<uint64_t>(t));
    const int64_t pick =
        std::min<int64_t>(pos, static_cast<int64_t>(u * static_cast<double>(pos + 1)));
    std::swap(perm[static_cast<size_t>(pos)], perm[static_cast<size_t>(pick)]);
  }
  return perm;
}

int64_t patch_floats(const Recipe& r) {
  return r.patch_size * r.patch_size * r.patch_size;
}

Batch empty_batch(const StreamConfig& cfg, int64_t step) {
  const int64_t P = cfg.recipe.patch_size;
  const Shape s{cfg.batch, P, P, P, 1};
  return Batch{step, Tensor::zeros(s), Tensor::zeros(s)};
}

// A host tensor left uninitialised: the producer overwrites every element of
// a batch, and zero-filling a group's batches (800 MB for the paper recipe)
// would cost as much as a volume's FFT.
Tensor uninitialised(const Shape& s) {
  std::shared_ptr<float[]> data(new float[static_cast<size_t>(s.numel())]);
  return Tensor::wrap(data.get(), s, DType::f32, Device::cpu,
                      std::shared_ptr<void>(data, data.get()));
}

Batch unfilled_batch(const StreamConfig& cfg, int64_t step) {
  const int64_t P = cfg.recipe.patch_size;
  const Shape s{cfg.batch, P, P, P, 1};
  return Batch{step, uninitialised(s), uninitialised(s)};
}

}  // namespace

void StreamConfig::validate() const {
  recipe.validate();
  if (batch < 1) fail("stream: batch must be >= 1, got ", batch);
  if (train_volumes < 0) fail("data.train_volumes: must be >= 0, got ", train_volumes);
  if (pool < 1) fail("stream: pool must be >= 1 volume, got ", pool);
  if (workers < 1) fail("stream: workers must be >= 1, got ", workers);
  if (device != "cpu" && device != "gpu")
    fail("stream: device \"", device, "\" is not \"cpu\" or \"gpu\"");
  if (train_volumes > 0 && train_volumes * recipe.patches_per_volume < batch)
    fail("train.batch ", batch, " is larger than the training set (data.train_volumes ",
         train_volumes, " x data.patches_per_volume ", recipe.patches_per_volume, " patches)");
}

int64_t StreamConfig::group_volumes() const {
  const int64_t ppv = recipe.patches_per_volume;
  int64_t g = std::max(pool, (batch + ppv - 1) / ppv);
  if (train_volumes > 0) g = std::min(g, train_volumes);
  return g;
}

int64_t StreamConfig::batches_per_group() const {
  return group_volumes() * recipe.patches_per_volume / batch;
}

int64_t StreamConfig::volume_of(int64_t group, int64_t slot) const {
  const int64_t v = group * group_volumes() + slot;
  return train_volumes > 0 ? v % train_volumes : v;
}

std::vector<PatchRef> batch_patches(const StreamConfig& cfg, int64_t step) {
  cfg.validate();
  if (step < 0) fail("stream: step ", step, " is negative");
  const int64_t bpg = cfg.batches_per_group(), g = step / bpg, j = step % bpg;
  const int64_t ppv = cfg.recipe.patches_per_volume;
  const std::vector<int64_t> perm = group_permutation(cfg, g);
  std::vector<PatchRef> out(static_cast<size_t>(cfg.batch));
  for (int64_t b = 0; b < cfg.batch; ++b) {
    const int64_t q = perm[static_cast<size_t>(j * cfg.batch + b)];
    out[static_cast<size_t>(b)] = {cfg.volume_of(g, q / ppv), static_cast<int>(q % ppv)};
  }
  return out;
}

Batch make_batch(const StreamConfig& cfg, int64_t step) {
  const std::vector<PatchRef> refs = batch_patches(cfg, step);
  const Recipe& r = cfg.recipe;
  const int64_t per = patch_floats(r);
  Batch out = empty_batch(cfg, step);
  std::vector<int64_t> done;  // volumes generated so far, with their data in `vols`
  std::vector<SynthVolume> vols;
  for (size_t b = 0; b < refs.size(); ++b) {
    auto it = std::find(done.begin(), done.end(), refs[b].volume);
    if (it == done.end()) {
      done.push_back(refs[b].volume);
      vols.push_back(generate_volume(r, cfg.seed, refs[b].volume));
      it = done.end() - 1;
    }
    const SynthVolume& v = vols[static_cast<size_t>(it - done.begin())];
    const auto c = draw_patch_corner(r, cfg.seed, refs[b].volume, refs[b].patch);
    copy_patch(v.field.data(), v.n, c, r.patch_size,
               out.field.f32() + static_cast<int64_t>(b) * per);
    copy_patch(v.chi.data(), v.n, c, r.patch_size, out.chi.f32() + static_cast<int64_t>(b) * per);
  }
  return out;
}

PatchSet validation_patches(const StreamConfig& cfg, int64_t n_volumes) {
  cfg.validate();
  // The GPU generator has no brain-shaped volumes: a recipe with them is
  // generated on the CPU (PatchStream's constructor says so in the log).
  if (cfg.device == "gpu" && cfg.recipe.brain_prob == 0)
    return generate_patches_gpu(cfg.recipe, cfg.seed, kValidationVolumeBase, n_volumes);
  return generate_patches(cfg.recipe, cfg.seed, kValidationVolumeBase, n_volumes);
}

// ---------------------------------------------------------------- producer

// All patches of one volume, from the CPU generator or from a GpuSynth on
// the producer's own (non-blocking) CUDA stream.
struct PatchStream::VolumeSource {
  const Recipe& r;
  uint64_t seed;
  cudaStream_t stream = nullptr;
  std::unique_ptr<GpuSynth> gpu;
  std::vector<float> stage_field, stage_chi;  // GPU: one volume's patches, (ppv, P, P, P)

  explicit VolumeSource(const StreamConfig& cfg) : r(cfg.recipe), seed(cfg.seed) {
    if (cfg.device != "gpu") return;
    DQ_CUDA(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
    gpu = std::make_unique<GpuSynth>(r, stream);
    const size_t n = static_cast<size_t>(r.patches_per_volume * patch_floats(r));
    stage_field.resize(n);
    stage_chi.resize(n);
  }
  ~VolumeSource() {
    gpu.reset();
    if (stream) cudaStreamDestroy(stream);  // fails only after an earlier, reported error
  }
  VolumeSource(const VolumeSource&) = delete;
  VolumeSource& operator=(const VolumeSource&) = delete;

  void patches(int64_t volume, float* field, float* chi) {
    // Brain-shaped volumes come from the CPU generator (synth/brain.h has no
    // GPU twin); the paper-recipe volumes of a mix stay on the GPU.
    if (gpu && !volume_is_brain(r, seed, volume)) {
      gpu->generate(seed, volume);
      gpu->cut_patches_to_host(seed, volume, r.patches_per_volume, field, chi);
      return;
    }
    const SynthVolume v = generate_volume(r, seed, volume);
    cut_patches(r, v, seed, volume, r.patches_per_volume, field, chi);
  }
};

PatchStream::PatchStream(const StreamConfig& cfg, int64_t first_step)
    : cfg_(cfg), step_(first_step) {
  cfg_.validate();
  if (first_step < 0) fail("stream: first step ", first_step, " is negative");
  if (cfg_.device == "gpu") {
    cfg_.workers = 1;  // one CUDA stream; the GPU is the parallelism
    // The current device is per thread and a new thread starts on device 0:
    // the producer must generate on the GPU of the rank that owns it.
    DQ_CUDA(cudaGetDevice(&cuda_device_));
    if (cfg_.recipe.brain_prob > 0)
      std::printf(
          "stream: data.brain_prob %g: brain-shaped volumes come from the CPU generator "
          "(synth/brain.h, one producer thread), the paper-recipe volumes from the GPU\n",
          cfg_.recipe.brain_prob);
  }
  const Recipe& r = cfg_.recipe;
  const double bytes = 2.0 * static_cast<double>(cfg_.train_volumes) * r.patches_per_volume *
                       static_cast<double>(patch_floats(r)) * sizeof(float);
  use_cache_ = cfg_.train_volumes > 0 && bytes <= static_cast<double>(cfg_.cache_bytes);
  if (use_cache_) cache_.resize(static_cast<size_t>(cfg_.train_volumes));
  const int64_t first_group = first_step / cfg_.batches_per_group();
  producer_ = std::thread([this, first_group] { produce(first_group); });
}

PatchStream::~PatchStream() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  producer_.join();
}

int64_t PatchStream::volumes_generated() const {
  std::lock_guard<std::mutex> lock(mu_);
  return generated_;
}

std::shared_ptr<const PatchStream::VolumePatches> PatchStream::patches_of(int64_t volume,
                                                                          VolumeSource& source) {
  if (use_cache_) {
    std::lock_guard<std::mutex> lock(mu_);
    if (auto hit = cache_[static_cast<size_t>(volume)]) return hit;
  }
  const size_t n = static_cast<size_t>(cfg_.recipe.patches_per_volume * patch_floats(cfg_.recipe));
  auto vp = std::make_shared<VolumePatches>();
  vp->field.resize(n);
  vp->chi.resize(n);
  source.patches(volume, vp->field.data(), vp->chi.data());
  std::lock_guard<std::mutex> lock(mu_);
  ++generated_;
  if (use_cache_) cache_[static_cast<size_t>(volume)] = vp;
  return vp;
}

PatchStream::Group PatchStream::build_group(int64_t g,
                                            std::vector<std::unique_ptr<VolumeSource>>& sources) {
  const int64_t bpg = cfg_.batches_per_group(), B = cfg_.batch, G = cfg_.group_volumes();
  const int64_t ppv = cfg_.recipe.patches_per_volume, per = patch_floats(cfg_.recipe);
  const size_t bytes = sizeof(float) * static_cast<size_t>(per);
  Group group;
  group.index = g;
  for (int64_t j = 0; j < bpg; ++j) group.batches.push_back(unfilled_batch(cfg_, g * bpg + j));
  // Where each patch of the group goes: slot[q] = position in the dealt order.
  const std::vector<int64_t> perm = group_permutation(cfg_, g);
  std::vector<int64_t> slot(perm.size());
  for (size_t t = 0; t < perm.size(); ++t)
    slot[static_cast<size_t>(perm[t])] = static_cast<int64_t>(t);

  // Worker w takes slots w, w + workers, ...; each writes only its own
  // patches' batch positions, so the workers share nothing but the cache.
  auto work = [&](size_t w) {
    for (int64_t i = static_cast<int64_t>(w); i < G; i += static_cast<int64_t>(sources.size())) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stop_) return;
      }
      const int64_t volume = cfg_.volume_of(g, i);
      auto destination = [&](int64_t p, float** field, float** chi) {
        const int64_t t = slot[static_cast<size_t>(i * ppv + p)];
        if (t >= bpg * B) return false;  // one of the few left over
        Batch& b = group.batches[static_cast<size_t>(t / B)];
        *field = b.field.f32() + (t % B) * per;
        *chi = b.chi.f32() + (t % B) * per;
        return true;
      };
      float *field = nullptr, *chi = nullptr;
      if (!use_cache_ && !sources[w]->gpu) {
        // Straight from the volume into the batches: no per-volume copy.
        const SynthVolume v = generate_volume(cfg_.recipe, cfg_.seed, volume);
        {
          std::lock_guard<std::mutex> lock(mu_);
          ++generated_;
        }
        for (int64_t p = 0; p < ppv; ++p) {
          if (!destination(p, &field, &chi)) continue;
          const auto c = draw_patch_corner(cfg_.recipe, cfg_.seed, volume, static_cast<int>(p));
          copy_patch(v.field.data(), v.n, c, cfg_.recipe.patch_size, field);
          copy_patch(v.chi.data(), v.n, c, cfg_.recipe.patch_size, chi);
        }
        continue;
      }
      if (!use_cache_) {
        // GPU: all of the volume's patches in one copy to the source's staging buffers.
        VolumeSource& src = *sources[w];
        src.patches(volume, src.stage_field.data(), src.stage_chi.data());
        {
          std::lock_guard<std::mutex> lock(mu_);
          ++generated_;
        }
        for (int64_t p = 0; p < ppv; ++p) {
          if (!destination(p, &field, &chi)) continue;
          std::memcpy(field, src.stage_field.data() + p * per, bytes);
          std::memcpy(chi, src.stage_chi.data() + p * per, bytes);
        }
        continue;
      }
      const auto vp = patches_of(volume, *sources[w]);
      for (int64_t p = 0; p < ppv; ++p) {
        if (!destination(p, &field, &chi)) continue;
        std::memcpy(field, vp->field.data() + p * per, bytes);
        std::memcpy(chi, vp->chi.data() + p * per, bytes);
      }
    }
  };
  std::vector<std::thread> helpers;
  std::vector<std::exception_ptr> errors(sources.size());
  for (size_t w = 1; w < sources.size(); ++w)
    helpers.emplace_back([&, w] {
      try {
        work(w);
      } catch (...) {
        errors[w] = std::current_exception();
      }
    });
  try {
    work(0);
  } catch (...) {
    errors[0] = std::current_exception();
  }
  for (std::thread& h : helpers) h.join();
  for (const std::exception_ptr& e : errors)
    if (e) std::rethrow_exception(e);
  return group;
}

void PatchStream::produce(int64_t first_group) {
  try {
    if (cfg_.device == "gpu") DQ_CUDA(cudaSetDevice(cuda_device_));
    std::vector<std::unique_ptr<VolumeSource>> sources;
    for (int w = 0; w < cfg_.workers; ++w) sources.push_back(std::make_unique<VolumeSource>(cfg_));
    for (int64_t g = first_group;; ++g) {
      {
        // Double buffering: build group g + 1 while the trainer reads group g.
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || ready_.size() < 2; });
        if (stop_) return;
      }
      Group group = build_group(g, sources);
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) return;
      ready_.push_back(std::move(group));
      cv_.notify_all();
    }
  } catch (...) {
    std::lock_guard<std::mutex> lock(mu_);
    error_ = std::current_exception();
    cv_.notify_all();
  }
}

Batch PatchStream::next() {
  const int64_t bpg = cfg_.batches_per_group(), g = step_ / bpg, j = step_ % bpg;
  std::unique_lock<std::mutex> lock(mu_);
  const auto t0 = std::chrono::steady_clock::now();
  cv_.wait(lock, [&] { return error_ || (!ready_.empty() && ready_.front().index == g); });
  wait_s_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!ready_.empty() && ready_.front().index == g) {
    Batch out = std::move(ready_.front().batches[static_cast<size_t>(j)]);
    if (j == bpg - 1) {
      ready_.pop_front();
      cv_.notify_all();
    }
    ++step_;
    return out;
  }
  std::rethrow_exception(error_);
}

}  // namespace dq
