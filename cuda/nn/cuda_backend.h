// The CUDA backend: dq::Backend for Device::cuda tensors. Convolutions go
// through cuDNN's graph API (cuda/nn/conv.h); everything else through the
// hand-written kernels (cuda/nn/kernels.h, cuda/nn/bias.h). Every op is queued on
// one stream owned by the backend; upload, download, mse_loss and
// unscale_and_check (whose values the host needs) wait for it, nothing else
// does.
//
// Tensors at the interface are fp32 in every precision mode (the U-Net and
// the trainer are written once, for fp32 buffers); the mode decides how the
// convolutions compute (see cuda/nn/conv.h): fp32 (no tensor cores), tf32, or
// bf16/fp16 operands with fp32 accumulation. fp16 training needs dynamic
// loss scaling, which the trainer drives (core/nn/loss_scale.h) through
// unscale_and_check (kernel in cuda/nn/loss_scale.h).
//
// Memory: alloc, workspaces and scratch come from one pool sized at start
// (arena_bytes) that reuses freed blocks; see cuda/device_pool.h for the
// first-touch growth rule and how to check the steady state never calls
// cudaMalloc.
//
// The stream is created blocking (not cudaStreamNonBlocking), so work on the
// legacy default stream, e.g. copy_to_device() in cuda/memory.h, stays
// ordered with the backend's work.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>
#include <string>

#include "core/nn/backend.h"
#include "cuda/device_pool.h"

namespace dq {

struct CudaBackendOptions {
  int device = 0;                              // CUDA device ordinal; made current on this thread
  std::string precision = "fp32";              // fp32 | tf32 | bf16 | fp16
  size_t arena_bytes = size_t{1} << 30;        // device memory reserved at start
  size_t workspace_limit = size_t{256} << 20;  // cuDNN engines needing more are skipped
  bool fuse = true;           // bias + ReLU inside the cuDNN graph where an engine can
  bool autotune = true;       // time cuDNN's candidates once per shape
  bool deterministic = true;  // prefer engines that give bit-identical results run to run
};

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& opt = {});

// For code that knows it holds a CUDA backend (fails otherwise): its stream,
// its memory pool's counters, and one line per cached convolution plan.
cudaStream_t cuda_stream(const Backend& be);
DevicePoolStats cuda_pool_stats(const Backend& be);
std::string cuda_conv_report(const Backend& be);

}  // namespace dq
