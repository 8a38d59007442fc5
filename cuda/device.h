// CUDA device discovery and the error-check macros every CUDA file uses.
// Host-callable without CUDA headers, so core-side code can ask "is there a GPU?".
#pragma once
#include <cstddef>
#include <string>

namespace dq {

// Number of usable CUDA devices; 0 when there is no driver or no device.
int cuda_device_count();
// Why cuda_device_count() is 0, for the message of a GPU path that needs one:
// "no CUDA device is available", or that this build has no CUDA at all.
const char* cuda_no_device_reason();
// Bytes the driver can still hand out on the current device (cudaMemGetInfo).
size_t cuda_free_bytes();
// "NVIDIA H100 80GB HBM3, driver 13.0, runtime 13.0, cuDNN 9.19.0"
std::string cuda_device_summary(int device = 0);

}  // namespace dq
