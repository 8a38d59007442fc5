// Entry point for the GPU tests. Without a GPU every test exits 77, which
// ctest reports as skipped (SKIP_RETURN_CODE); listing still works so that
// test discovery runs on machines without a GPU.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cuda/device.h"

int main(int argc, char** argv) {
  // --emu-block-order=normal|reverse|shuffle sets DEEPQSM_EMU_BLOCK_ORDER for
  // the emulator (ctest runs the emu tests in two orders with it); dropped
  // before Catch sees the arguments.
  std::vector<char*> args;
  for (int i = 0; i < argc; ++i) {
    if (std::strncmp(argv[i], "--emu-block-order=", 18) == 0)
      setenv("DEEPQSM_EMU_BLOCK_ORDER", argv[i] + 18, 1);
    else
      args.push_back(argv[i]);
  }
  argc = static_cast<int>(args.size());
  argv = args.data();
  bool listing = false;
  for (int i = 1; i < argc; ++i)
    if (std::strncmp(argv[i], "--list", 6) == 0) listing = true;
  if (!listing && dq::cuda_device_count() == 0) {
    std::printf("no CUDA device: GPU test skipped\n");
    return 77;
  }
  if (!listing) std::printf("GPU: %s\n", dq::cuda_device_summary(0).c_str());
  return Catch::Session().run(argc, argv);
}
