// Where training patches come from (the config's data.source):
//
//   generator, data.refresh_every = 0   one fixed set: volumes 0 .. train_volumes-1
//       of the synthetic recipe, generated up front and held in memory
//       (2 * N * P^3 * 4 bytes; the paper's 100,000 64^3 patches would need
//       210 GB, so the source refuses sets larger than 3/4 of the RAM).
//   generator, data.refresh_every = K   streaming: steps [bK, (b+1)K) draw from
//       block b, the fresh volumes b*train_volumes .. (b+1)*train_volumes-1,
//       generated when the block starts. The block index is the checkpoint's
//       data_position; a resumed run regenerates the same block.
//   stream                              synth/stream.h's PatchStream: a producer
//       thread generates volumes ahead of the trainer into pools of patches
//       from several volumes and deals them into whole batches, so the step
//       does not wait on generation in steady state. Batch k is a pure
//       function of (seed, k); train_volumes cycles a finite set, 0 draws a
//       fresh volume every time. Ranks take their slice of each batch.
//   hdf5                                a patch file, read patch by patch (an
//       HDF5 hyperslab per patch) so it may be far larger than memory.
//       Layout: float32 datasets "field" and "chi" (ppm), shape (N, P, P, P)
//       or (N, P, P, P, 1), P = data.patch_size, same N; patch i of "field"
//       is the dipole field of patch i of "chi". Attributes are ignored.
//
// Every rank opens its own source; batches are chosen by the trainer from a
// counter RNG over [0, size()) (or dealt by the stream), so ranks agree on
// them without talking.
#pragma once
#include <cstdint>
#include <memory>
#include <vector>

#include "train/config.h"

namespace dq {

class PatchSource {
 public:
  virtual ~PatchSource() = default;
  // Makes the patches of `step` available (generates a fresh block when a
  // streaming block starts). Returns true when it generated or loaded data.
  virtual bool prepare(int64_t step) = 0;
  // Patches the current step draws from.
  virtual int64_t size() const = 0;
  // The data position stored in checkpoints: the streaming block of `step`
  // (0 for fixed sets and patch files).
  virtual int64_t position(int64_t step) const = 0;
  // Copies patches idx[0..n) into field and chi, each (n, P, P, P, 1) floats.
  virtual void gather(const std::vector<int64_t>& idx, float* field, float* chi) = 0;
  virtual std::string describe() const = 0;  // one line for the log
  // True when the source deals whole batches itself: patch i of the current
  // step's batch is index i, and the trainer takes its slice in order
  // instead of drawing indices.
  virtual bool deals_batches() const { return false; }
};

std::unique_ptr<PatchSource> make_patch_source(const TrainConfig& cfg);

}  // namespace dq
