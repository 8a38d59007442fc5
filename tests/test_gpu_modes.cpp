// What the builds without CUDA (DEEPQSM_GPU=off) or without cuDNN and NCCL
// (DEEPQSM_GPU=emu) say when a GPU path is asked for: a clear error naming
// the build, never a crash or a link failure. The cuda build has its own GPU
// tests (tests/gpu), so this file holds nothing there.
#if defined(DEEPQSM_EMU)
#include <catch2/catch.hpp>
#include <string>

#include "cuda/device.h"
#include "cuda/nn/cuda_backend.h"
#include "train/comm.h"

using namespace dq;

#if defined(DEEPQSM_GPU_OFF)
TEST_CASE("off build: no device, and every GPU entry point says it was built without CUDA",
          "[gpu-modes]") {
  CHECK(cuda_device_count() == 0);
  CHECK_THAT(cuda_no_device_reason(), Catch::Contains("built without CUDA"));
  CHECK_THROWS_WITH(make_cuda_backend(), Catch::Contains("built without CUDA"));
  CHECK_THROWS_WITH(nccl_unique_id_bytes(), Catch::Contains("built without CUDA"));
}
#else
TEST_CASE("emu build: the emulated device is there, cuDNN's backend and NCCL say they are not",
          "[gpu-modes]") {
  CHECK(cuda_device_count() == 1);
  CHECK_THAT(cuda_device_summary(0), Catch::Contains("emulator"));
  CHECK_THROWS_WITH(make_cuda_backend(), Catch::Contains("needs cuDNN"));
  CHECK_THROWS_WITH(make_nccl_communicator(0, 1, 0, nullptr, 0), Catch::Contains("needs NCCL"));
}
#endif
#endif
