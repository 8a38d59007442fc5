// Check macros for CUDA runtime, cuDNN and cuFFT return codes: each failure
// throws dq::Error with file:line and the library's own message.
#pragma once
#include <cuda_runtime.h>
#include <cudnn.h>
#include <cufft.h>

#include <string>

#include "core/error.h"

namespace dq {
const char* cufft_error_string(cufftResult r);
namespace cudnn {
// cuDNN's name for the status and its last error message, which says which
// of its libraries or symbols is missing when cudnnCreate fails (cuda/nn/graph.cpp).
std::string status_text(cudnnStatus_t s);
}  // namespace cudnn
}  // namespace dq

#define DQ_CUDA(call)                                                                        \
  do {                                                                                       \
    cudaError_t e_ = (call);                                                                 \
    if (e_ != cudaSuccess)                                                                   \
      ::dq::fail_device(__FILE__, ":", __LINE__, ": ", #call, ": ", cudaGetErrorString(e_)); \
  } while (0)

#define DQ_CUDNN(call)                                                                    \
  do {                                                                                    \
    cudnnStatus_t s_ = (call);                                                            \
    if (s_ != CUDNN_STATUS_SUCCESS)                                                       \
      ::dq::fail(__FILE__, ":", __LINE__, ": ", #call, ": ", ::dq::cudnn::status_text(s_)); \
  } while (0)

#define DQ_CUFFT(call)                                                                         \
  do {                                                                                         \
    cufftResult r_ = (call);                                                                   \
    if (r_ != CUFFT_SUCCESS)                                                                   \
      ::dq::fail(__FILE__, ":", __LINE__, ": ", #call, ": ", ::dq::cufft_error_string(r_), \
                 " (cufftResult ", static_cast<int>(r_), ")");                               \
  } while (0)
