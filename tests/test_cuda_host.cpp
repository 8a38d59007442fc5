// The host side of the CUDA backend, on machines without a GPU: cuDNN
// finalizes every convolution operation the backend builds (attribute types,
// NDHWC dims and strides, and that X, W and Y agree with the convolution's
// padding and stride, which is where a wrong transposed-convolution mapping
// would show), the variant packs are consistent, and failures name what
// went wrong (a cudaMalloc that fails for want of a GPU is not "out of
// memory"; cuFFT and cuDNN codes are spelled out).
#include <catch2/catch.hpp>
#include <cstdint>
#include <functional>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/nn/op_checks.h"
#include "cuda/check.h"
#include "cuda/device.h"
#include "cuda/memory.h"
#include "cuda/nn/conv.h"

using namespace dq;

namespace {

ConvGeometry geometry(int64_t n, int64_t d, int64_t h, int64_t w, int64_t ci, int64_t co,
                      int64_t k) {
  ConvGeometry g;
  g.transposed = k == 2;
  g.n = n;
  g.d = d;
  g.h = h;
  g.w = w;
  g.ci = ci;
  g.co = co;
  g.k = k;
  return g;
}

// The roles (0 = X, 1 = W, 2 = Y) of the layer's first input, second input
// and output in cuDNN's convolution (cuda/nn/conv.h): forward (x, w) -> y,
// backward-data (dy, w) -> dx, backward-filter (x, dy) -> dw; the
// transposed convolution is the adjoint of a convolution whose X is the
// layer's output space.
std::vector<int> roles(ConvPass pass, bool transposed) {
  switch (pass) {
    case ConvPass::forward: return transposed ? std::vector<int>{2, 1, 0} : std::vector<int>{0, 1, 2};
    case ConvPass::backward_data:
      return transposed ? std::vector<int>{0, 1, 2} : std::vector<int>{2, 1, 0};
    case ConvPass::backward_filter: break;
  }
  return transposed ? std::vector<int>{2, 0, 1} : std::vector<int>{0, 2, 1};
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("cuDNN accepts every convolution operation the CUDA backend builds", "[cuda]") {
  const std::vector<ConvGeometry> layers = {
      geometry(2, 6, 8, 10, 3, 5, 3),         // odd channels, unequal sides
      geometry(2, 4, 6, 8, 16, 1, 1),         // the 1x1x1 head
      geometry(2, 3, 4, 5, 8, 4, 2),          // transposed, unequal sides
      geometry(40, 64, 64, 64, 1, 16, 3),     // the paper's first layer, batch 40
      geometry(40, 32, 32, 32, 32, 16, 2),    // its last up-convolution
      geometry(1, 224, 272, 160, 16, 16, 3),  // a whole-brain inference volume
  };
  const ConvPass passes[] = {ConvPass::forward, ConvPass::backward_data,
                             ConvPass::backward_filter};
  for (const ConvGeometry& g : layers) {
    for (ConvPass pass : passes) {
      for (cudnnDataType_t io : {CUDNN_DATA_FLOAT, CUDNN_DATA_HALF, CUDNN_DATA_BFLOAT16}) {
        for (int variant = 0; variant < 4; ++variant) {
          const bool fused = variant > 0, bias = variant & 1, relu = variant & 2;
          // The backend fuses only the forward pass, and only with fp32 operands.
          if (fused && (pass != ConvPass::forward || io != CUDNN_DATA_FLOAT)) continue;
          CAPTURE(g.n, g.d, g.h, g.w, g.ci, g.co, g.k, static_cast<int>(pass),
                  static_cast<int>(io), bias, relu);
          const int64_t align = io == CUDNN_DATA_FLOAT ? 4 : 16;
          ConvOps ops;
          REQUIRE_NOTHROW(ops = conv_ops(pass, g, fused && bias, fused && relu, io, align, fused));

          CHECK(ops.ops.size() == 1u + (fused && bias ? 1u : 0u) + (fused && relu ? 1u : 0u));
          CHECK(ops.keep.size() + 2 <= ConvOps::kKeep);
          REQUIRE(ops.uids.size() == ops.slots.size());
          CHECK(std::set<int64_t>(ops.uids.begin(), ops.uids.end()).size() == ops.uids.size());
          // The pack: both inputs, [the bias], then the output, by role.
          const std::vector<int> r = roles(pass, g.transposed);
          CHECK(ops.slots.front() == r[0]);
          CHECK(ops.slots[1] == r[1]);
          CHECK(ops.slots.back() == r[2]);
          CHECK(ops.slots.size() == (fused && bias ? 4u : 3u));
        }
      }
    }
  }
}

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
