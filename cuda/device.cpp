#include "cuda/device.h"

#include <sstream>

#if !defined(DEEPQSM_EMU)
#include <cudnn.h>
#endif

#include "cuda/check.h"

namespace dq {

int cuda_device_count() {
  int n = 0;
  // No driver or no device is an answer here, not an error.
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return n;
}

const char* cuda_no_device_reason() {
#if defined(DEEPQSM_GPU_OFF)
  return "this deepqsm was built without CUDA (DEEPQSM_GPU=off)";
#else
  return "no CUDA device is available";
#endif
}

size_t cuda_free_bytes() {
  size_t free = 0, total = 0;
  DQ_CUDA(cudaMemGetInfo(&free, &total));
  return free;
}

std::string cuda_device_summary(int device) {
  cudaDeviceProp prop{};
  DQ_CUDA(cudaGetDeviceProperties(&prop, device));
  std::ostringstream os;
  os << prop.name << " (sm_" << prop.major << prop.minor << ", "
     << prop.totalGlobalMem / (1024 * 1024) << " MiB)";
#if defined(DEEPQSM_EMU)
  os << ", no driver, runtime or cuDNN: the emulator (DEEPQSM_GPU=emu)";
#else
  int drv = 0, rt = 0;
  DQ_CUDA(cudaDriverGetVersion(&drv));
  DQ_CUDA(cudaRuntimeGetVersion(&rt));
  size_t cudnn = cudnnGetVersion();
  os << ", driver " << drv / 1000 << "." << (drv % 1000) / 10 << ", runtime " << rt / 1000 << "."
     << (rt % 1000) / 10 << ", cuDNN " << cudnn / 10000 << "." << (cudnn % 10000) / 100 << "."
     << cudnn % 100;
#endif
  return os.str();
}

const char* cufft_error_string(cufftResult r) {
  switch (r) {
    case CUFFT_SUCCESS: return "success";
    case CUFFT_INVALID_PLAN: return "invalid plan";
    case CUFFT_ALLOC_FAILED: return "allocation failed";
    case CUFFT_INVALID_VALUE: return "invalid value";
    case CUFFT_INTERNAL_ERROR: return "internal error";
    case CUFFT_EXEC_FAILED: return "execution failed";
    case CUFFT_SETUP_FAILED: return "setup failed";
    case CUFFT_INVALID_SIZE: return "invalid size";
    case CUFFT_INVALID_TYPE: return "invalid type";
    case CUFFT_UNALIGNED_DATA: return "unaligned data";
    case CUFFT_INVALID_DEVICE: return "invalid device";
    case CUFFT_NO_WORKSPACE: return "no workspace";
    case CUFFT_NOT_IMPLEMENTED: return "not implemented";
    case CUFFT_NOT_SUPPORTED: return "not supported";
    default: return "cuFFT error";
  }
}

}  // namespace dq
