// Check macros for CUDA runtime, cuDNN and cuFFT return codes: each failure
// throws dq::Error with file:line and the library's own message.
#pragma once
#include <cuda_runtime.h>
#include <cudnn.h>
#include <cufft.h>

#include "core/error.h"

namespace dq {
const char* cufft_error_string(cufftResult r);
}

#define DQ_CUDA(call)                                                                  \
  do {                                                                                 \
    cudaError_t e_ = (call);                                                           \
    if (e_ != cudaSuccess)                                                             \
      ::dq::fail(__FILE__, ":", __LINE__, ": ", #call, ": ", cudaGetErrorString(e_)); \
  } while (0)

#define DQ_CUDNN(call)                                                                    \
  do {                                                                                    \
    cudnnStatus_t s_ = (call);                                                            \
    if (s_ != CUDNN_STATUS_SUCCESS)                                                       \
      ::dq::fail(__FILE__, ":", __LINE__, ": ", #call, ": ", cudnnGetErrorString(s_));   \
  } while (0)

#define DQ_CUFFT(call)                                                                         \
  do {                                                                                         \
    cufftResult r_ = (call);                                                                   \
    if (r_ != CUFFT_SUCCESS)                                                                   \
      ::dq::fail(__FILE__, ":", __LINE__, ": ", #call, ": ", ::dq::cufft_error_string(r_));    \
  } while (0)
