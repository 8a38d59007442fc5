// Streaming training batches: a producer generates volumes ahead of the
// trainer (its own thread on the CPU, its own CUDA stream on the GPU) into a
// pool of patches drawn from several volumes, and hands over whole batches,
// so the trainer waits only when generating a pool takes longer than
// training on it.
//
// Determinism: batch k is a pure function of (config, k), whatever the
// timing. The training volumes are split into groups of G =
// group_volumes() consecutive slots (`pool`, raised to fill one batch,
// capped at train_volumes); group g holds volumes g*G .. g*G + G - 1
// (modulo train_volumes when the set is finite, so it cycles like epochs),
// i.e. G * patches_per_volume patches. A permutation of those patches keyed
// by (seed, g) deals them into batches_per_group() = floor(G * ppv /
// batch) batches; the few left over are not used. So batch k is group
// k / bpg, batch k % bpg of it, and a resumed run at step k gets the very
// batches it would have had; the thread only precomputes ahead.
//
//   key_for(key_for(seed, kStreamPurpose), g)   counters 0..M-2: the
//                                               Fisher-Yates shuffle of group g
#pragma once
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "core/nn/tensor.h"
#include "synth/recipe.h"
#include "synth/synth.h"

namespace dq {

constexpr uint64_t kStreamPurpose = 0x5354524541ull;  // "STREA": batch assignment
// Held-out volumes come from their own index range, far from any training
// volume (training uses 0 .. train_volumes - 1, or 0 .. 2^40 unbounded), so
// the two sets never share a shape.
constexpr int64_t kValidationVolumeBase = int64_t{1} << 40;

struct StreamConfig {
  Recipe recipe;
  uint64_t seed = 1;
  int64_t batch = 4;           // patches per batch
  int64_t train_volumes = 0;   // size of the training set (cycled); 0 = a new volume every time
  int64_t pool = 8;            // volumes whose patches are shuffled together (one group)
  std::string device = "cpu";  // "cpu" | "gpu": which generator the producer runs
  int workers = 1;             // CPU: threads generating a group's volumes in parallel
  // Patches of every training volume are kept after their first generation
  // when they all fit in this many bytes (small sets stop costing after one
  // pass); otherwise each visit regenerates them.
  int64_t cache_bytes = int64_t{1} << 30;

  // Throws dq::Error naming the setting at fault.
  void validate() const;
  // Volumes per group: `pool`, at least enough for one batch, at most train_volumes.
  int64_t group_volumes() const;
  int64_t batches_per_group() const;
  // Volume index of slot `slot` of group `group`.
  int64_t volume_of(int64_t group, int64_t slot) const;
};

// One patch of one volume: patch `patch` (draw_patch_corner's counter) of
// training volume `volume`.
struct PatchRef {
  int64_t volume = 0;
  int patch = 0;
  bool operator==(const PatchRef& o) const { return volume == o.volume && patch == o.patch; }
};

// The patches of batch `step`, in batch order. Pure.
std::vector<PatchRef> batch_patches(const StreamConfig& cfg, int64_t step);

struct Batch {
  int64_t step = 0;
  Tensor field, chi;  // (batch, P, P, P, 1) fp32 host, ppm
};

// Batch `step` built directly (generating the volumes it needs, on the CPU):
// the reference the stream is tested against; slow.
Batch make_batch(const StreamConfig& cfg, int64_t step);

// The held-out set: volumes kValidationVolumeBase .. + n_volumes - 1, all
// their patches (generate_patches), on cfg.device's generator.
PatchSet validation_patches(const StreamConfig& cfg, int64_t n_volumes);

class PatchStream {
 public:
  // Validates cfg and starts the producer at the group holding first_step.
  PatchStream(const StreamConfig& cfg, int64_t first_step = 0);
  // Stops the producer (after the volume it is generating) and joins it.
  ~PatchStream();
  PatchStream(const PatchStream&) = delete;
  PatchStream& operator=(const PatchStream&) = delete;

  // The batch for next_step(), then the one after, ...; blocks only while
  // the producer has not finished that batch's group. Rethrows a failure
  // of the producer.
  Batch next();
  int64_t next_step() const { return step_; }

  // Seconds next() has spent waiting for the producer, in total; and the
  // volumes generated so far (cache hits not counted).
  double wait_seconds() const { return wait_s_; }
  int64_t volumes_generated() const;

 private:
  struct VolumeSource;  // the CPU or GPU generator of one producer thread
  struct Group {
    int64_t index = 0;
    std::vector<Batch> batches;
  };
  struct VolumePatches {
    std::vector<float> field, chi;  // (ppv, P, P, P)
  };

  void produce(int64_t first_group);
  Group build_group(int64_t g, std::vector<std::unique_ptr<VolumeSource>>& sources);
  std::shared_ptr<const VolumePatches> patches_of(int64_t volume, VolumeSource& source);

  StreamConfig cfg_;
  int cuda_device_ = 0;  // GPU: the constructing thread's device, made the producer's too
  int64_t step_;
  double wait_s_ = 0;
  bool use_cache_ = false;

  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Group> ready_;  // at most two groups: the one being read and the next
  bool stop_ = false;
  std::exception_ptr error_;
  int64_t generated_ = 0;
  std::vector<std::shared_ptr<const VolumePatches>> cache_;  // [volume], when use_cache_
  std::thread producer_;
};

}  // namespace dq
