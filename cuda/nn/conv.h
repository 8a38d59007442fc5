// cuDNN graph-API convolutions for the CUDA backend: forward, backward-data
// and backward-filter of the 3x3x3 / 1x1x1 'same' convolution and of the
// 2x2x2 stride-2 transposed convolution, over our NDHWC activations and
// weight layouts (see core/nn/backend.h). cuDNN sees logical (N, C, D, H, W)
// dimensions; our layouts enter only through the strides.
//
// The transposed convolution is the adjoint of a stride-2 convolution whose
// input lives in the layer's output space: its forward is that
// convolution's backward-data, its data gradient the convolution's forward,
// its weight gradient the convolution's backward-filter (with the layer's dy
// as "x" and the layer's x as "dy").
//
// A plan is built once per key (pass, geometry, precision, operand type,
// bias, ReLU, pointer alignment) and cached, refusals included. Building it: the operation graph;
// the engine configurations cuDNN's heuristics (mode A, then the fallback list) propose, filtered
// by their numerical notes for the precision; up to kMaxCandidates execution plans; each timed on
// the call's own buffers (the outputs are overwritten, never accumulated, so a timing run is
// harmless); the fastest kept. With fusion on, the forward pass first tries the graph conv -> +
// bias -> ReLU in one engine and falls back to the plain convolution plus cuda_bias_act when no
// engine finalizes it.
//
// Precision: fp32 and tf32 run cuDNN on our fp32 buffers (fp32 refuses
// engines with the tensor-core note, so no TF32; tf32 allows them). bf16
// and fp16 cast x, w and dy to half scratch, run cuDNN with half tensors and
// fp32 accumulation (compute type FLOAT, reduced-precision-reduction engines
// refused) and widen the result back to fp32, the bias and ReLU fused into
// that widening. A layer no engine takes with half operands (odd channel
// counts can have none) runs with fp32 operands instead, and the report says
// so. The bias gradient is always summed from the fp32 dy.
#pragma once
#include <cuda_runtime.h>
#include <cudnn.h>

#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include <vector>

#include "core/nn/op_checks.h"
#include "cuda/device_pool.h"
#include "cuda/nn/graph.h"

namespace dq {

enum class Precision { fp32, tf32, bf16, fp16 };
Precision precision_from_name(const std::string& name);  // "fp32"|"tf32"|"bf16"|"fp16"
const char* precision_name(Precision p);


enum class ConvPass { forward, backward_data, backward_filter };

// The cuDNN operations of one layer pass, finalized (cuDNN has checked
// every attribute and that the shapes agree) but not yet in an operation
// graph, which needs a handle and so a GPU. `keep` owns every descriptor
// the operations refer to and has room for the graph and the engine
// configuration the caller appends (it must not reallocate); `ops` go into
// the graph; the variant pack takes the pointer of role slots[i] (0 = X,
// 1 = W, 2 = Y, 3 = bias) for unique id uids[i]. `fused` puts + bias and
// ReLU on a virtual fp32 convolution output.
struct ConvOps {
  static constexpr size_t kKeep = 16;
  std::vector<cudnn::Descriptor> keep;
  std::vector<const cudnn::Descriptor*> ops;
  std::vector<int64_t> uids;
  std::vector<int> slots;
};
ConvOps conv_ops(ConvPass pass, const ConvGeometry& g, bool bias, bool relu, cudnnDataType_t io,
                 int64_t align, bool fused);

struct ConvOptions {
  Precision precision = Precision::fp32;
  bool fuse = true;           // try bias + ReLU inside the cuDNN graph
  bool autotune = true;       // time the candidates; else take the first that builds
  bool deterministic = true;  // prefer engines without the nondeterministic note
  size_t workspace_limit = size_t{256} << 20;  // engines needing more are skipped
};

class CudnnConv {
 public:
  static constexpr int kMaxCandidates = 8;
  static constexpr int kMaxAttempts = 16;  // execution plans finalized per graph

  CudnnConv(cudaStream_t stream, std::shared_ptr<DevicePool> pool, const ConvOptions& opt);
  ~CudnnConv();
  CudnnConv(const CudnnConv&) = delete;
  CudnnConv& operator=(const CudnnConv&) = delete;

  // y = act(layer(x, w) + b); b may be null; act is ReLU when relu.
  void forward(const ConvGeometry& g, const float* x, const float* w, const float* b, float* y,
               bool relu);
  // dx = the adjoint of the layer (without bias) applied to dy.
  void backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx);
  // dw, and db = sum of dy over (n, d, h, w) when db is non-null; overwritten.
  void backward_filter(const ConvGeometry& g, const float* x, const float* dy, float* dw,
                       float* db);

  // One line per cached plan: key, engine, fused or not, time, workspace
  // (or that no engine took the half operands and the layer runs in fp32).
  std::string report() const;

 private:
  struct Plan;

  std::string key(ConvPass pass, const ConvGeometry& g, bool bias, bool relu, cudnnDataType_t io,
                  int64_t align) const;
  bool refused(const std::string& key) const;
  Plan* plan(ConvPass pass, const ConvGeometry& g, bool bias, bool relu, cudnnDataType_t io,
             int64_t align, const void* const* ptrs, bool required);
  void layer(ConvPass pass, const ConvGeometry& g, const float* a, int64_t na, const float* b,
             int64_t nb, float* out, int64_t rows, int64_t c, const float* bias, bool relu);
  std::shared_ptr<void> to_half(const float* x, int64_t n);
  void run(Plan& p, const void* const* ptrs);

  cudaStream_t stream_;
  std::shared_ptr<DevicePool> pool_;
  ConvOptions opt_;
  cudnnHandle_t handle_ = nullptr;
  std::map<std::string, std::unique_ptr<Plan>> plans_;
};

}  // namespace dq
