// Check macros for CUDA runtime and cuFFT return codes (cuDNN's, DQ_CUDNN, is
// in cuda/nn/graph.h, beside the cuDNN wrapper): each failure
// throws dq::Error with file:line and the library's own message.
#pragma once
#include <cuda_runtime.h>
#include <cufft.h>

#include <string>

#include "core/error.h"

namespace dq {
const char* cufft_error_string(cufftResult r);
}  // namespace dq

#define DQ_CUDA(call)                                                                        \
  do {                                                                                       \
    cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess)                                                                   \
      ::dq::fail_device(__FILE__, ":", __LINE__, ": ", #call, ": ", cudaGetErrorString(e_)); \
  } while (0)

#define DQ_CUFFT(call)                                                                         \
  do {                                                                                         \
    cufftResult r_ = (call);                                                                   \
    if (r_ != CUFFT_SUCCESS)                                                                   \
      ::dq::fail(__FILE__, ":", __LINE__, ": ", #call, ": ", ::dq::cufft_error_string(r_), \
                 " (cufftResult ", static_cast<int>(r_), ")");                               \
  } while (0)
