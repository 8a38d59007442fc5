// The CUDA backend's entry points in the builds that have no cuDNN
// (DEEPQSM_GPU=emu runs the hand-written kernels, cuFFT's physics and the
// generator on the emulator, but cuDNN's convolutions need the real library
// and a device; DEEPQSM_GPU=off has no CUDA at all). Each says so and fails.
#include <string>

#include "core/error.h"
#include "cuda/nn/cuda_backend.h"

namespace dq {

namespace {
[[noreturn]] void absent(const char* what) {
#if defined(DEEPQSM_GPU_OFF)
  fail(what, ": this deepqsm was built without CUDA (DEEPQSM_GPU=off), so no CUDA device is "
             "usable; the CPU backend (--device cpu) works, the CUDA backend needs a "
             "DEEPQSM_GPU=cuda build");
#else
  fail(what, ": the CUDA backend needs cuDNN, which the emulated build (DEEPQSM_GPU=emu) "
             "does not have; its kernels run in the emu tests, the backend needs "
             "DEEPQSM_GPU=cuda");
#endif
}
}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions&) {
  absent("the CUDA backend");
}
cudaStream_t cuda_stream(const Backend&) { absent("cuda_stream"); }
DevicePoolStats cuda_pool_stats(const Backend&) { absent("cuda_pool_stats"); }
std::string cuda_conv_report(const Backend&) { absent("cuda_conv_report"); }

}  // namespace dq
