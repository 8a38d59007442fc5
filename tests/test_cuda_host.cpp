// The host side of the CUDA backend, on machines without a GPU: failures
// name what went wrong (a cudaMalloc that fails for want of a GPU is not
// "out of memory"; cuFFT and cuDNN codes are spelled out).
#include <catch2/catch.hpp>
#include <functional>
#include <iterator>
#include <set>
#include <string>

#include "core/error.h"
#include "cuda/check.h"
#include "cuda/device.h"
#include "cuda/memory.h"

using namespace dq;

namespace {

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a failed cudaMalloc says why, and out of memory only when it is", "[cuda]") {
  const std::string msg = message_of([] { DeviceBuffer b(size_t{1} << 62); });
  REQUIRE(!msg.empty());
  if (cuda_device_count() == 0) {
    CHECK(msg.find("out of GPU memory") == std::string::npos);
    CHECK(msg.find("cudaMalloc") != std::string::npos);
  } else {
    CHECK(msg.find("out of GPU memory") != std::string::npos);
  }
}

TEST_CASE("cuFFT and cuDNN failures are spelled out", "[cuda]") {
  const cufftResult codes[] = {CUFFT_INVALID_PLAN,    CUFFT_ALLOC_FAILED,   CUFFT_INVALID_TYPE,
                               CUFFT_INVALID_VALUE,   CUFFT_INTERNAL_ERROR, CUFFT_EXEC_FAILED,
                               CUFFT_SETUP_FAILED,    CUFFT_INVALID_SIZE,   CUFFT_UNALIGNED_DATA,
                               CUFFT_INVALID_DEVICE,  CUFFT_NO_WORKSPACE,   CUFFT_NOT_IMPLEMENTED,
                               CUFFT_NOT_SUPPORTED};
  std::set<std::string> names;
  for (cufftResult c : codes) names.insert(cufft_error_string(c));
  CHECK(names.size() == std::size(codes));
  CHECK(names.count("cuFFT error") == 0);

  const std::string fft = message_of([] { DQ_CUFFT(CUFFT_NOT_SUPPORTED); });
  CHECK(fft.find("not supported") != std::string::npos);
  CHECK(fft.find("cufftResult 16") != std::string::npos);

  const std::string dnn = message_of([] { DQ_CUDNN(CUDNN_STATUS_NOT_SUPPORTED); });
  CHECK(dnn.find("CUDNN_STATUS_NOT_SUPPORTED") != std::string::npos);
}
