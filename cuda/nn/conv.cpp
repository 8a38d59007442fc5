#include "cuda/nn/conv.h"

#include <algorithm>
#include <cstdint>
#include <set>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "cuda/check.h"
#include "cuda/nn/bias.h"
#include "cuda/nn/graph.h"

namespace dq {

using cudnn::Descriptor;

Precision precision_from_name(const std::string& name) {
  if (name == "fp32") return Precision::fp32;
  if (name == "tf32") return Precision::tf32;
  if (name == "bf16") return Precision::bf16;
  if (name == "fp16") return Precision::fp16;
  fail("unknown precision '", name, "' (expected fp32, tf32, bf16 or fp16)");
}

const char* precision_name(Precision p) {
  switch (p) {
    case Precision::fp32: return "fp32";
    case Precision::tf32: return "tf32";
    case Precision::bf16: return "bf16";
    case Precision::fp16: return "fp16";
  }
  return "?";
}

namespace {

// The three tensors of a cuDNN convolution, by role: X the convolution's
// input space, W its filter, Y its output space. Which of them a layer's
// tensors are depends on the pass and on whether the layer is transposed
// (see bind()).
enum Role { kX = 0, kW = 1, kY = 2, kBias = 3 };

// Unique ids in the operation graph: the roles' ids are role + 1; the
// virtual intermediates and the fused output follow.
constexpr int64_t kUidBias = 4, kUidConvOut = 5, kUidBiased = 6, kUidOut = 7;

enum class CudnnOp { fwd, bwd_data, bwd_filter };

struct Binding {
  CudnnOp op;
  Role a, b, out;  // the layer's first input, second input, output
};

// The roles a layer pass's tensors take. Forward: (x, w) -> y;
// backward-data: (dy, w) -> dx; backward-filter: (x, dy) -> dw.
Binding bind(ConvPass pass, bool transposed) {
  switch (pass) {
    case ConvPass::forward:
      return transposed ? Binding{CudnnOp::bwd_data, kY, kW, kX}
                        : Binding{CudnnOp::fwd, kX, kW, kY};
    case ConvPass::backward_data:
      return transposed ? Binding{CudnnOp::fwd, kX, kW, kY}
                        : Binding{CudnnOp::bwd_data, kY, kW, kX};
    case ConvPass::backward_filter: break;
  }
  return transposed ? Binding{CudnnOp::bwd_filter, kY, kX, kW}
                    : Binding{CudnnOp::bwd_filter, kX, kY, kW};
}

// Logical dimensions and strides of the three roles for a layer.
struct Problem {
  std::vector<int64_t> dims[3], strides[3];
  int64_t stride = 1, pad = 0;
};

// An activation (N, C, D, H, W) stored NDHWC.
void ndhwc(std::vector<int64_t>& dims, std::vector<int64_t>& strides, int64_t n, int64_t c,
           int64_t d, int64_t h, int64_t w) {
  dims = {n, c, d, h, w};
  strides = {d * h * w * c, 1, h * w * c, w * c, c};
}

Problem problem(const ConvGeometry& g) {
  Problem p;
  if (g.transposed) {
    // The stride-2 convolution from the layer's output space (co channels,
    // 2x the sides) to its input space (ci channels). Our weights
    // (Ci, 2, 2, 2, Co) are that convolution's filter (K = ci, C = co, 2, 2, 2)
    // stored K, T, R, S, C.
    ndhwc(p.dims[kX], p.strides[kX], g.n, g.co, 2 * g.d, 2 * g.h, 2 * g.w);
    ndhwc(p.dims[kY], p.strides[kY], g.n, g.ci, g.d, g.h, g.w);
    p.dims[kW] = {g.ci, g.co, 2, 2, 2};
    p.strides[kW] = {8 * g.co, 1, 4 * g.co, 2 * g.co, g.co};
    p.stride = 2;
    p.pad = 0;
  } else {
    // Our weights (Co, k, k, k, Ci) are the filter (K = co, C = ci, k, k, k)
    // stored K, T, R, S, C.
    const int64_t k = g.k;
    ndhwc(p.dims[kX], p.strides[kX], g.n, g.ci, g.d, g.h, g.w);
    ndhwc(p.dims[kY], p.strides[kY], g.n, g.co, g.d, g.h, g.w);
    p.dims[kW] = {g.co, g.ci, k, k, k};
    p.strides[kW] = {k * k * k * g.ci, 1, k * k * g.ci, k * g.ci, g.ci};
    p.stride = 1;
    p.pad = k / 2;
  }
  return p;
}

int64_t numel(const std::vector<int64_t>& dims) {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

cudnnDataType_t io_type(Precision p) {
  switch (p) {
    case Precision::bf16: return CUDNN_DATA_BFLOAT16;
    case Precision::fp16: return CUDNN_DATA_HALF;
    default: return CUDNN_DATA_FLOAT;
  }
}

bool half_io(Precision p) {
  return p == Precision::bf16 || p == Precision::fp16;
}

DType half_dtype(Precision p) {
  return p == Precision::bf16 ? DType::bf16 : DType::f16;
}

// The largest power of two up to 16 dividing every non-null pointer: cuDNN
// needs to know how aligned the buffers it will be given are.
int64_t alignment(const void* const* ptrs, int count) {
  int64_t align = 16;
  for (int i = 0; i < count; ++i) {
    if (!ptrs[i]) continue;
    auto a = reinterpret_cast<uintptr_t>(ptrs[i]);
    while (align > 1 && a % static_cast<uintptr_t>(align) != 0) align /= 2;
  }
  return align;
}

Descriptor tensor(int64_t uid, const std::vector<int64_t>& dims,
                  const std::vector<int64_t>& strides, cudnnDataType_t type, int64_t align,
                  bool is_virtual) {
  Descriptor t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
  t.set(DQ_ATTR(CUDNN_ATTR_TENSOR_DATA_TYPE), type)
      .set(DQ_ATTR(CUDNN_ATTR_TENSOR_DIMENSIONS), dims)
      .set(DQ_ATTR(CUDNN_ATTR_TENSOR_STRIDES), strides)
      .set(DQ_ATTR(CUDNN_ATTR_TENSOR_UNIQUE_ID), uid)
      .set(DQ_ATTR(CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT), align)
      .set(DQ_ATTR(CUDNN_ATTR_TENSOR_IS_VIRTUAL), is_virtual);
  t.finalize();
  return t;
}

// Appends a pointwise operation y = mode(x[, b]) and its pointwise
// descriptor to `keep` (the operation refers to it until the plan is gone).
void pointwise_op(std::vector<Descriptor>& keep, cudnnPointwiseMode_t mode, const Descriptor& x,
                  const Descriptor* b, const Descriptor& y) {
  Descriptor pw(CUDNN_BACKEND_POINTWISE_DESCRIPTOR);
  pw.set(DQ_ATTR(CUDNN_ATTR_POINTWISE_MODE), mode)
      .set(DQ_ATTR(CUDNN_ATTR_POINTWISE_MATH_PREC), CUDNN_DATA_FLOAT);
  pw.finalize();
  Descriptor op(CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR);
  op.set(DQ_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_PW_DESCRIPTOR), pw)
      .set(DQ_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_XDESC), x);
  if (b) op.set(DQ_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_BDESC), *b);
  op.set(DQ_ATTR(CUDNN_ATTR_OPERATION_POINTWISE_YDESC), y);
  op.finalize();
  keep.push_back(std::move(pw));
  keep.push_back(std::move(op));
}

// The engine configurations cuDNN proposes for a graph under one heuristic
// mode, best first; empty when it has none, and then `why` says so.
std::vector<Descriptor> heuristic_configs(const Descriptor& graph, cudnnBackendHeurMode_t mode,
                                          const char* mode_name, std::string& why) {
  Descriptor heur(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR);
  heur.set(DQ_ATTR(CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH), graph)
      .set(DQ_ATTR(CUDNN_ATTR_ENGINEHEUR_MODE), mode);
  cudnnStatus_t s = heur.try_finalize();
  if (s != CUDNN_STATUS_SUCCESS) {
    why += std::string("; heuristics ") + mode_name + ": " + cudnn::status_text(s);
    return {};
  }
  int64_t count = 0;
  s = cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                               CUDNN_TYPE_BACKEND_DESCRIPTOR, 0, &count, nullptr);
  if (s != CUDNN_STATUS_SUCCESS || count <= 0) {
    why += std::string("; heuristics ") + mode_name + ": " +
           (s != CUDNN_STATUS_SUCCESS ? cudnn::status_text(s) : std::string("no configuration"));
    return {};
  }
  std::vector<Descriptor> cfgs;
  std::vector<cudnnBackendDescriptor_t> raw;
  for (int64_t i = 0; i < count; ++i) {
    cfgs.emplace_back(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
    raw.push_back(cfgs.back().get());
  }
  int64_t got = 0;
  s = cudnnBackendGetAttribute(heur.get(), CUDNN_ATTR_ENGINEHEUR_RESULTS,
                               CUDNN_TYPE_BACKEND_DESCRIPTOR, count, &got, raw.data());
  if (s != CUDNN_STATUS_SUCCESS) {
    why += std::string("; heuristics ") + mode_name + ": " + cudnn::status_text(s);
    return {};
  }
  cfgs.erase(cfgs.begin() + std::min(std::max<int64_t>(got, 0), count), cfgs.end());
  return cfgs;
}

struct EngineInfo {
  int64_t index = -1;
  bool known = false;  // the notes were read; an engine whose notes are unknown is refused
  std::vector<cudnnBackendNumericalNote_t> notes;
};

EngineInfo engine_info(const Descriptor& cfg) {
  EngineInfo info;
  Descriptor engine(CUDNN_BACKEND_ENGINE_DESCRIPTOR);
  cudnnBackendDescriptor_t e = engine.get();
  int64_t n = 0;
  if (cudnnBackendGetAttribute(cfg.get(), CUDNN_ATTR_ENGINECFG_ENGINE,
                               CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &e) != CUDNN_STATUS_SUCCESS)
    return info;
  // The index only labels the report; -1 when cuDNN does not say.
  if (cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n,
                               &info.index) != CUDNN_STATUS_SUCCESS)
    info.index = -1;
  cudnnBackendNumericalNote_t notes[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
  if (cudnnBackendGetAttribute(e, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                               CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &n, notes) == CUDNN_STATUS_SUCCESS) {
    info.known = true;
    info.notes.assign(notes, notes + std::clamp<int64_t>(n, 0, CUDNN_NUMERICAL_NOTE_TYPE_COUNT));
  }
  return info;
}

// Whether an engine's numerics fit the precision mode and the operand type
// `io`. The essential rules always apply: fp32 refuses tensor cores (TF32),
// fp32 operands are never down-converted (not in tf32 mode, nor when a
// bf16/fp16 layer falls back to fp32 operands, whose range a conversion to
// fp16 would lose), and every mode refuses reduced-precision accumulation.
// `strict` adds the preferences (deterministic engines; fp32 without FFT or
// Winograd, whose rounding differs from a direct convolution's), which are
// dropped when no engine meets them.
bool acceptable(const EngineInfo& e, Precision p, cudnnDataType_t io, bool strict,
                bool deterministic) {
  // Without its notes an engine might be a TF32 or down-converting one.
  if (!e.known) return false;
  for (cudnnBackendNumericalNote_t n : e.notes) {
    switch (n) {
      case CUDNN_NUMERICAL_NOTE_TENSOR_CORE:
        if (p == Precision::fp32) return false;
        break;
      case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS:
        if (io == CUDNN_DATA_FLOAT) return false;
        break;
      case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION: return false;
      case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC:
        if (strict && deterministic) return false;
        break;
      case CUDNN_NUMERICAL_NOTE_FFT:
      case CUDNN_NUMERICAL_NOTE_WINOGRAD:
      case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4:
      case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6:
      case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13:
        if (strict && p == Precision::fp32) return false;
        break;
      default: break;
    }
  }
  return true;
}

// "tensor-core,nondeterministic": an engine's numerical notes, for the report.
std::string notes_text(const EngineInfo& e) {
  std::string t;
  for (cudnnBackendNumericalNote_t n : e.notes) {
    const char* name = "other";
    switch (n) {
      case CUDNN_NUMERICAL_NOTE_TENSOR_CORE: name = "tensor-core"; break;
      case CUDNN_NUMERICAL_NOTE_DOWN_CONVERT_INPUTS: name = "down-convert"; break;
      case CUDNN_NUMERICAL_NOTE_REDUCED_PRECISION_REDUCTION: name = "reduced-reduction"; break;
      case CUDNN_NUMERICAL_NOTE_FFT: name = "fft"; break;
      case CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC: name = "nondeterministic"; break;
      case CUDNN_NUMERICAL_NOTE_WINOGRAD:
      case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_4x4:
      case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_6x6:
      case CUDNN_NUMERICAL_NOTE_WINOGRAD_TILE_13x13: name = "winograd"; break;
      default: break;
    }
    t += (t.empty() ? "" : ",") + std::string(name);
  }
  return t.empty() ? "none" : t;
}

// A cudaEvent pair for timing candidates, destroyed on every exit path.
struct EventPair {
  cudaEvent_t start = nullptr, stop = nullptr;
  EventPair() {
    DQ_CUDA(cudaEventCreate(&start));
    DQ_CUDA(cudaEventCreate(&stop));
  }
  ~EventPair() {
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
  }
  EventPair(const EventPair&) = delete;
  EventPair& operator=(const EventPair&) = delete;
};

}  // namespace

// The operations of one layer pass, built and finalized on the host (no
// handle is needed, so tests/test_cuda_host.cpp checks them without a GPU).
ConvOps conv_ops(ConvPass pass, const ConvGeometry& g, bool bias, bool relu, cudnnDataType_t io,
                 int64_t align, bool fused) {
  const Binding bd = bind(pass, g.transposed);
  const Problem pr = problem(g);
  ConvOps c;
  std::vector<Descriptor>& keep = c.keep;
  std::vector<const Descriptor*>& ops = c.ops;
  keep.reserve(ConvOps::kKeep);
  for (int r = 0; r < 3; ++r) {
    bool out_virtual = fused && r == bd.out;
    keep.push_back(tensor(out_virtual ? kUidConvOut : r + 1, pr.dims[r], pr.strides[r],
                          out_virtual ? CUDNN_DATA_FLOAT : io, out_virtual ? 16 : align,
                          out_virtual));
  }
  const Descriptor& tx = keep[0];
  const Descriptor& tw = keep[1];
  const Descriptor& ty = keep[2];

  Descriptor conv(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
  const std::vector<int64_t> ones{1, 1, 1};
  const std::vector<int64_t> stride(3, pr.stride), pad(3, pr.pad);
  conv.set(DQ_ATTR(CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS), int64_t{3})
      .set(DQ_ATTR(CUDNN_ATTR_CONVOLUTION_COMP_TYPE), CUDNN_DATA_FLOAT)
      .set(DQ_ATTR(CUDNN_ATTR_CONVOLUTION_CONV_MODE), CUDNN_CROSS_CORRELATION)
      .set(DQ_ATTR(CUDNN_ATTR_CONVOLUTION_DILATIONS), ones)
      .set(DQ_ATTR(CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES), stride)
      .set(DQ_ATTR(CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS), pad)
      .set(DQ_ATTR(CUDNN_ATTR_CONVOLUTION_POST_PADDINGS), pad);
  conv.finalize();

  const float alpha = 1.0f, beta = 0.0f;
  Descriptor op;
  switch (bd.op) {
    case CudnnOp::fwd:
      op = Descriptor(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR);
      op.set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X), tx)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W), tw)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y), ty)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC), conv)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA), alpha)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA), beta);
      break;
    case CudnnOp::bwd_data:
      op = Descriptor(CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR);
      op.set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DX), tx)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_W), tw)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_DY), ty)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_CONV_DESC), conv)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_ALPHA), alpha)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_DATA_BETA), beta);
      break;
    case CudnnOp::bwd_filter:
      op = Descriptor(CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR);
      op.set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_X), tx)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DW), tw)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_DY), ty)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_CONV_DESC), conv)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_ALPHA), alpha)
          .set(DQ_ATTR(CUDNN_ATTR_OPERATION_CONVOLUTION_BWD_FILTER_BETA), beta);
      break;
  }
  op.finalize();
  keep.push_back(std::move(conv));
  keep.push_back(std::move(op));
  ops.push_back(&keep.back());

  // Variant pack: the layer's two inputs, then its output.
  c.uids = {bd.a + 1, bd.b + 1};
  c.slots = {bd.a, bd.b};
  if (fused) {
    // conv -> [+ bias] -> [ReLU] -> out, the intermediates virtual fp32.
    const Descriptor& conv_out = keep[static_cast<size_t>(bd.out)];
    const std::vector<int64_t>& od = pr.dims[bd.out];
    const std::vector<int64_t>& os = pr.strides[bd.out];
    keep.push_back(tensor(kUidOut, od, os, io, align, false));
    const size_t out_at = keep.size() - 1;
    const Descriptor* cur = &conv_out;
    if (bias) {
      const int64_t ch = od[1];
      keep.push_back(tensor(kUidBias, {1, ch, 1, 1, 1}, {ch, 1, ch, ch, ch}, CUDNN_DATA_FLOAT,
                            align, false));
      const size_t bias_at = keep.size() - 1;
      size_t biased_at = out_at;
      if (relu) {
        keep.push_back(tensor(kUidBiased, od, os, CUDNN_DATA_FLOAT, 16, true));
        biased_at = keep.size() - 1;
      }
      pointwise_op(keep, CUDNN_POINTWISE_ADD, *cur, &keep[bias_at], keep[biased_at]);
      ops.push_back(&keep.back());
      cur = &keep[biased_at];
      c.uids.push_back(kUidBias);
      c.slots.push_back(kBias);
    }
    if (relu) {
      pointwise_op(keep, CUDNN_POINTWISE_RELU_FWD, *cur, nullptr, keep[out_at]);
      ops.push_back(&keep.back());
    }
    c.uids.push_back(kUidOut);
  } else {
    c.uids.push_back(bd.out + 1);
  }
  c.slots.push_back(bd.out);
  // The caller appends the operation graph and the engine configuration.
  DQ_CHECK(keep.size() + 2 <= ConvOps::kKeep, "cuDNN graph keeps ", keep.size(), " descriptors");
  return c;
}

// A built convolution: every descriptor the execution plan was made from
// (kept alive with it), the plan, and how to pack a call's pointers.
struct CudnnConv::Plan {
  std::string key;
  std::vector<Descriptor> keep;
  Descriptor exec;
  std::vector<int64_t> uids;  // variant-pack ids ...
  std::vector<int> slots;     // ... and which of run()'s pointers each takes
  int64_t workspace = 0;
  int64_t engine = -1;
  int candidates = 0;
  float ms = 0.0f;
  bool fused = false;
  std::string notes;  // the chosen engine's numerical notes, for the report
  std::string why;    // without an engine: why the last graph tried was refused
};

CudnnConv::CudnnConv(cudaStream_t stream, std::shared_ptr<DevicePool> pool, const ConvOptions& opt)
    : stream_(stream), pool_(std::move(pool)), opt_(opt) {
  DQ_CUDNN(cudnnCreate(&handle_));
  cudnnStatus_t s = cudnnSetStream(handle_, stream_);
  if (s != CUDNN_STATUS_SUCCESS) {
    cudnnDestroy(handle_);
    fail("cuDNN: cudnnSetStream failed: ", cudnn::status_text(s));
  }
}

CudnnConv::~CudnnConv() {
  plans_.clear();  // descriptors first, while the handle they were built with lives
  if (handle_) cudnnDestroy(handle_);
}

std::string CudnnConv::report() const {
  std::ostringstream os;
  for (const auto& kv : plans_) {
    const Plan& p = *kv.second;
    if (!p.exec) {
      os << kv.first << ": no engine (" << (p.why.empty() ? "none offered" : p.why)
         << "); runs with fp32 operands\n";
      continue;
    }
    os << p.key << ": engine " << p.engine << " [" << p.notes << "]" << (p.fused ? ", fused" : "")
       << ", " << p.candidates << " candidate(s), " << p.ms << " ms, workspace " << p.workspace
       << " B\n";
  }
  return os.str();
}

namespace {

// Executes one plan with the pointers of its variant pack.
cudnnStatus_t execute(cudnnHandle_t handle, const Descriptor& plan,
                      const std::vector<int64_t>& uids, std::vector<void*>& ptrs, void* workspace) {
  Descriptor pack(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR);
  pack.set(DQ_ATTR(CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS), uids)
      .set(DQ_ATTR(CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS), CUDNN_TYPE_VOID_PTR,
           static_cast<int64_t>(ptrs.size()), ptrs.data())
      .set(DQ_ATTR(CUDNN_ATTR_VARIANT_PACK_WORKSPACE), CUDNN_TYPE_VOID_PTR, 1, &workspace);
  pack.finalize();
  return cudnnBackendExecute(handle, plan.get(), pack.get());
}

}  // namespace

std::string CudnnConv::key(ConvPass pass, const ConvGeometry& g, bool bias, bool relu,
                           cudnnDataType_t io, int64_t align) const {
  std::ostringstream ks;
  const char* pass_name[] = {"fwd", "bwd_data", "bwd_filter"};
  const char* io_name = io == CUDNN_DATA_FLOAT ? "fp32" : io == CUDNN_DATA_HALF ? "fp16" : "bf16";
  ks << (g.transposed ? "deconv" : "conv") << g.k << ' ' << pass_name[static_cast<int>(pass)]
     << " x(" << g.n << ',' << g.d << ',' << g.h << ',' << g.w << ',' << g.ci << ")->" << g.co
     << ' ' << precision_name(opt_.precision) << '/' << io_name << (bias ? " +bias" : "")
     << (relu ? " +relu" : "") << " align" << align;
  return ks.str();
}

bool CudnnConv::refused(const std::string& k) const {
  auto it = plans_.find(k);
  return it != plans_.end() && !it->second->exec;
}

// ptrs: the call's buffers by role (kX, kW, kY, kBias), with the operand
// type `io`. Returns null, remembered for the key, when cuDNN has no engine
// and the plan is not `required`.
CudnnConv::Plan* CudnnConv::plan(ConvPass pass, const ConvGeometry& g, bool bias, bool relu,
                                 cudnnDataType_t io, int64_t align, const void* const* ptrs,
                                 bool required) {
  const std::string key = this->key(pass, g, bias, relu, io, align);
  auto found = plans_.find(key);
  if (found != plans_.end()) return found->second->exec ? found->second.get() : nullptr;

  // Builds the graph (fused or plain) and its best execution plan into p;
  // false when cuDNN has no engine for it.
  auto build = [&](Plan& p, bool fused) -> bool {
    p = Plan();
    p.key = key;
    p.fused = fused;
    ConvOps ops = conv_ops(pass, g, bias, relu, io, align, fused);
    // Moving the vector keeps its storage, so ops.ops stays valid.
    p.keep = std::move(ops.keep);
    p.uids = std::move(ops.uids);
    p.slots = std::move(ops.slots);
    std::vector<Descriptor>& keep = p.keep;

    Descriptor graph(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
    graph.set(DQ_ATTR(CUDNN_ATTR_OPERATIONGRAPH_HANDLE), handle_)
        .set(DQ_ATTR(CUDNN_ATTR_OPERATIONGRAPH_OPS), ops.ops);
    cudnnStatus_t gs = graph.try_finalize();
    if (gs != CUDNN_STATUS_SUCCESS) {
      p.why = "no operation graph: " + cudnn::status_text(gs);
      if (fused || !required) return false;
      fail("cuDNN: ", p.why, " for ", key);
    }

    std::string why;  // what the heuristics and the filter said, for the no-engine error
    std::vector<Descriptor> cfgs = heuristic_configs(graph, CUDNN_HEUR_MODE_A, "A", why);
    std::vector<EngineInfo> infos;
    std::set<int64_t> seen;
    for (const Descriptor& d : cfgs) {
      infos.push_back(engine_info(d));
      seen.insert(infos.back().index);
    }
    // The fallback list mostly repeats mode A's engines: each is built once.
    for (Descriptor& d : heuristic_configs(graph, CUDNN_HEUR_MODE_FALLBACK, "fallback", why)) {
      EngineInfo info = engine_info(d);
      if (info.index >= 0 && seen.count(info.index)) continue;
      seen.insert(info.index);
      cfgs.push_back(std::move(d));
      infos.push_back(std::move(info));
    }

    struct Candidate {
      Descriptor plan;
      size_t cfg;
      int64_t workspace, engine;
    };
    std::vector<Candidate> cands;
    // Why configurations were turned down: by their notes in the last (least
    // strict) pass; unbuilt and too big over both, each configuration being
    // finalized at most once (engines that compile at run time take seconds
    // per finalize), and at most kMaxAttempts in all.
    int refused_notes = 0, unbuilt = 0, too_big = 0, attempts = 0;
    std::vector<char> tried(cfgs.size(), 0);
    for (bool strict : {true, false}) {
      refused_notes = 0;
      for (size_t i = 0; i < cfgs.size(); ++i) {
        if (static_cast<int>(cands.size()) == kMaxCandidates || attempts == kMaxAttempts) break;
        const Descriptor& cfg = cfgs[i];
        const EngineInfo& info = infos[i];
        if (!acceptable(info, opt_.precision, io, strict, opt_.deterministic)) {
          ++refused_notes;
          continue;
        }
        if (tried[i]) continue;
        tried[i] = 1;
        ++attempts;
        Descriptor ep(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR);
        ep.set(DQ_ATTR(CUDNN_ATTR_EXECUTION_PLAN_HANDLE), handle_)
            .set(DQ_ATTR(CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG), cfg);
        if (ep.try_finalize() != CUDNN_STATUS_SUCCESS) {
          cudnn::clear_last_error();  // an expected refusal must not label a later error
          ++unbuilt;
          continue;
        }
        int64_t ws = cudnn::get_int64(ep, DQ_ATTR(CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE));
        if (ws < 0 || static_cast<size_t>(ws) > opt_.workspace_limit) {
          ++too_big;
          continue;
        }
        cands.push_back({std::move(ep), i, ws, info.index});
      }
      if (!cands.empty()) break;
    }
    if (cands.empty()) {
      p.why = std::to_string(cfgs.size()) + " configurations, " + std::to_string(refused_notes) +
              " refused by their notes, " + std::to_string(unbuilt) + " unbuilt, " +
              std::to_string(too_big) + " over the workspace limit" + why;
      if (fused || !required) return false;
      fail("cuDNN offers no engine for ", key, " in ", precision_name(opt_.precision),
           " precision: ", cfgs.size(), " configurations proposed, ", refused_notes,
           " refused by their numerical notes, ", unbuilt, " failed to build, ", too_big,
           " need more than the ", opt_.workspace_limit >> 20, " MiB workspace limit", why);
    }

    keep.push_back(std::move(graph));

    // An engine that builds but fails to run on this shape is skipped; a
    // fault that outlives it (sticky, or from earlier work on the stream)
    // stops here with its own message instead of being cleared.
    auto engine_failed = [&] {
      DQ_CUDA(cudaStreamSynchronize(stream_));
      cudaGetLastError();  // the failed launch's own, non-sticky error
    };

    // Time the candidates on the call's own buffers.
    size_t best = 0;
    p.candidates = static_cast<int>(cands.size());
    if (opt_.autotune && cands.size() > 1) {
      int64_t max_ws = 0;
      for (const Candidate& c : cands) max_ws = std::max(max_ws, c.workspace);
      std::shared_ptr<void> ws = pool_->acquire(static_cast<size_t>(max_ws));
      std::vector<void*> vp;
      for (int s : p.slots) vp.push_back(const_cast<void*>(ptrs[s]));
      EventPair ev;
      float best_ms = -1.0f;
      for (size_t i = 0; i < cands.size(); ++i) {
        // A warm-up run, which also weeds out engines that build but fail
        // to launch on this shape, then the mean of three.
        if (execute(handle_, cands[i].plan, p.uids, vp, ws.get()) != CUDNN_STATUS_SUCCESS) {
          engine_failed();
          continue;
        }
        DQ_CUDA(cudaEventRecord(ev.start, stream_));
        bool ok = true;
        for (int r = 0; r < 3 && ok; ++r)
          ok = execute(handle_, cands[i].plan, p.uids, vp, ws.get()) == CUDNN_STATUS_SUCCESS;
        DQ_CUDA(cudaEventRecord(ev.stop, stream_));
        DQ_CUDA(cudaEventSynchronize(ev.stop));
        if (!ok) {
          engine_failed();
          continue;
        }
        float ms = 0.0f;
        DQ_CUDA(cudaEventElapsedTime(&ms, ev.start, ev.stop));
        ms /= 3.0f;
        if (best_ms < 0.0f || ms < best_ms) {
          best_ms = ms;
          best = i;
        }
      }
      if (best_ms < 0.0f) {
        if (fused || !required) return false;
        fail("cuDNN: every engine built for ", key, " failed to execute");
      }
      p.ms = best_ms;
    }
    p.notes = notes_text(infos[cands[best].cfg]);
    keep.push_back(std::move(cfgs[cands[best].cfg]));
    DQ_CHECK(keep.size() <= ConvOps::kKeep, "cuDNN graph keeps ", keep.size(), " descriptors");
    p.exec = std::move(cands[best].plan);
    p.workspace = cands[best].workspace;
    p.engine = cands[best].engine;
    return true;
  };

  // A refusal anywhere in a graph that may be refused (the fused one, or
  // reduced-precision operands) means "no engine", not an error: the caller
  // has another way to do the same work.
  // A CUDA fault (an illegal address is sticky) or an exhausted device pool
  // is never a refusal: it surfaces here, with its own message.
  auto p = std::make_unique<Plan>();
  auto attempt = [&](bool fused) {
    try {
      return build(*p, fused);
    } catch (const DeviceError&) {
      throw;
    } catch (const Error& e) {
      if (!fused && required) throw;
      if (cudaPeekAtLastError() != cudaSuccess) throw;  // sticky, whatever reported it
      p->why = e.what();
      return false;
    }
  };
  const bool try_fused =
      opt_.fuse && pass == ConvPass::forward && (bias || relu) && io == CUDNN_DATA_FLOAT;
  bool built = try_fused && attempt(true);
  if (!built) built = attempt(false);
  if (!built) {
    std::string why = p->why;
    p = std::make_unique<Plan>();
    p->key = key;
    p->why = std::move(why);
  }
  Plan* raw = plans_.emplace(key, std::move(p)).first->second.get();
  return raw->exec ? raw : nullptr;
}

void CudnnConv::run(Plan& p, const void* const* ptrs) {
  std::vector<void*> vp;
  vp.reserve(p.slots.size());
  for (int s : p.slots) vp.push_back(const_cast<void*>(ptrs[s]));
  std::shared_ptr<void> ws = pool_->acquire(static_cast<size_t>(p.workspace));
  cudnnStatus_t s = execute(handle_, p.exec, p.uids, vp, ws.get());
  if (s != CUDNN_STATUS_SUCCESS)
    fail("cuDNN: executing ", p.key, " (engine ", p.engine, ") failed: ", cudnn::status_text(s));
}

std::shared_ptr<void> CudnnConv::to_half(const float* x, int64_t n) {
  std::shared_ptr<void> h = pool_->acquire(static_cast<size_t>(n) * 2);
  cuda_cast_from_f32(x, h.get(), half_dtype(opt_.precision), n, stream_);
  return h;
}

namespace {

// Element counts of a layer's input x, weights and output y.
struct Sizes {
  int64_t x, w, y, y_rows;
};

Sizes sizes(const ConvGeometry& g) {
  DQ_CHECK(g.n >= 0 && g.d >= 0 && g.h >= 0 && g.w >= 0 && g.ci > 0 && g.co > 0 &&
               (g.transposed || g.k == 1 || g.k == 3),
           "convolution geometry x(", g.n, ", ", g.d, ", ", g.h, ", ", g.w, ", ", g.ci, ") -> ",
           g.co, " channels, kernel ", g.k, " is not supported");
  const int64_t f = g.transposed ? 2 : 1;
  const int64_t taps = g.transposed ? 8 : g.k * g.k * g.k;
  const int64_t rows = g.n * f * g.d * f * g.h * f * g.w;
  return {g.n * g.d * g.h * g.w * g.ci, taps * g.ci * g.co, rows * g.co, rows};
}

}  // namespace

// One layer pass: fp32 inputs a (na elements) and b (nb), fp32 output out
// viewed as (rows, c) for the epilogue act(out + bias).
void CudnnConv::layer(ConvPass pass, const ConvGeometry& g, const float* a, int64_t na,
                      const float* b, int64_t nb, float* out, int64_t rows, int64_t c,
                      const float* bias, bool relu) {
  const Binding bd = bind(pass, g.transposed);
  const void* ptrs[4] = {nullptr, nullptr, nullptr, nullptr};
  if (half_io(opt_.precision)) {
    // Pool blocks are 256-byte aligned, so the half operands are 16-aligned.
    const cudnnDataType_t io = io_type(opt_.precision);
    if (!refused(key(pass, g, false, false, io, 16))) {
      std::shared_ptr<void> ah = to_half(a, na), bh = to_half(b, nb);
      std::shared_ptr<void> outh = pool_->acquire(static_cast<size_t>(rows * c) * 2);
      ptrs[bd.a] = ah.get();
      ptrs[bd.b] = bh.get();
      ptrs[bd.out] = outh.get();
      if (Plan* p = plan(pass, g, false, false, io, alignment(ptrs, 4), ptrs, false)) {
        run(*p, ptrs);
        cuda_cast_to_f32_bias_act(outh.get(), half_dtype(opt_.precision), out, bias, rows, c, relu,
                                  stream_);
        return;
      }
    }
    // No engine takes these shapes with half operands (odd channel counts,
    // e.g. the one-channel input and output layers, can have none): this
    // layer runs with fp32 operands instead.
  }
  ptrs[bd.a] = a;
  ptrs[bd.b] = b;
  ptrs[bd.out] = out;
  ptrs[kBias] = bias;
  Plan* p = plan(pass, g, bias != nullptr, relu, CUDNN_DATA_FLOAT, alignment(ptrs, 4), ptrs, true);
  run(*p, ptrs);
  if (!p->fused) cuda_bias_act(out, bias, rows, c, relu, stream_);
}

void CudnnConv::forward(const ConvGeometry& g, const float* x, const float* w, const float* b,
                        float* y, bool relu) {
  const Sizes sz = sizes(g);
  if (sz.y == 0) return;
  layer(ConvPass::forward, g, x, sz.x, w, sz.w, y, sz.y_rows, g.co, b, relu);
}

void CudnnConv::backward_data(const ConvGeometry& g, const float* dy, const float* w, float* dx) {
  const Sizes sz = sizes(g);
  if (sz.x == 0) return;
  layer(ConvPass::backward_data, g, dy, sz.y, w, sz.w, dx, sz.x / g.ci, g.ci, nullptr, false);
}

void CudnnConv::backward_filter(const ConvGeometry& g, const float* x, const float* dy, float* dw,
                                float* db) {
  const Sizes sz = sizes(g);
  if (sz.w == 0) return;
  if (sz.x == 0) {
    // No voxels: the sums are empty.
    DQ_CUDA(cudaMemsetAsync(dw, 0, static_cast<size_t>(sz.w) * sizeof(float), stream_));
    if (db) DQ_CUDA(cudaMemsetAsync(db, 0, static_cast<size_t>(g.co) * sizeof(float), stream_));
    return;
  }
  layer(ConvPass::backward_filter, g, x, sz.x, dy, sz.y, dw, sz.w, 1, nullptr, false);
  if (db) {
    // Summed from the fp32 dy in every precision mode.
    std::shared_ptr<void> partials = pool_->acquire(
        static_cast<size_t>(bias_grad_scratch_count(sz.y_rows, g.co)) * sizeof(double));
    cuda_bias_grad(dy, db, sz.y_rows, g.co, static_cast<double*>(partials.get()), stream_);
  }
}

}  // namespace dq
