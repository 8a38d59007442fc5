// The CUDA backend: argument checks mirroring the CPU backend's, then one
// call into cuda/nn/conv.h or a kernel per op, all on the backend's stream.
#include "cuda/nn/cuda_backend.h"

#include <algorithm>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "core/nn/op_checks.h"
#include "cuda/check.h"
#include "cuda/device.h"
#include "cuda/nn/conv.h"
#include "cuda/nn/kernels.h"
#include "cuda/nn/loss_scale.h"

namespace dq {
namespace {

constexpr Device kDev = Device::cuda;

const float* fp(const Tensor& t) {
  return static_cast<const float*>(t.raw());
}
float* fp(Tensor& t) {
  return static_cast<float*>(t.raw());
}
const float* fp(const Tensor* t) {
  return t ? fp(*t) : nullptr;
}
float* fp(Tensor* t) {
  return t ? fp(*t) : nullptr;
}

class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(const CudaBackendOptions& opt) {
    const Precision precision = precision_from_name(opt.precision);
    const int count = cuda_device_count();
    if (count == 0) fail("the CUDA backend needs a GPU, and no CUDA device is visible");
    if (opt.device < 0 || opt.device >= count)
      fail("CUDA device ", opt.device, " requested, but only ", count, " visible");
    DQ_CUDA(cudaSetDevice(opt.device));
    cudaDeviceProp prop{};
    DQ_CUDA(cudaGetDeviceProperties(&prop, opt.device));
    DQ_CUDA(cudaStreamCreate(&stream_));
    try {
      pool_ = DevicePool::create(opt.arena_bytes);
      ConvOptions co;
      co.precision = precision;
      co.fuse = opt.fuse;
      co.autotune = opt.autotune;
      co.deterministic = opt.deterministic;
      co.workspace_limit = opt.workspace_limit;
      conv_ = std::make_unique<CudnnConv>(stream_, pool_, co);
      // The MSE partial sums and the loss itself, reserved once so that
      // mse_loss never allocates.
      mse_scratch_ = pool_->acquire(kMseMaxBlocks * sizeof(double) + sizeof(double));
      // unscale_and_check's non-finite flag, for the same reason.
      flag_ = pool_->acquire(sizeof(int));
    } catch (...) {
      conv_.reset();
      cudaStreamDestroy(stream_);
      throw;
    }
    size_t v = cudnnGetVersion();
    std::ostringstream os;
    os << "cuda (" << prop.name << ", cuDNN " << v / 10000 << "." << (v % 10000) / 100 << "."
       << v % 100 << ", " << precision_name(precision) << ")";
    name_ = os.str();
  }

  ~CudaBackend() override {
    conv_.reset();
    mse_scratch_.reset();
    flag_.reset();
    // Pending work may still read pool blocks; let it finish before the
    // stream goes. Errors here were reported where they happened.
    cudaStreamSynchronize(stream_);
    cudaStreamDestroy(stream_);
  }

  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  Device device() const override { return Device::cuda; }
  std::string name() const override { return name_; }

  cudaStream_t stream() const { return stream_; }
  DevicePoolStats pool_stats() const { return pool_->stats(); }
  std::string conv_report() const { return conv_->report(); }

  // ------------------------------------------------------------- memory
  Tensor alloc(const Shape& shape, DType dtype) override {
    for (int64_t d : shape.dims) DQ_CHECK(d >= 0, "alloc: negative dimension in ", shape.str());
    const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
    std::shared_ptr<void> block = pool_->acquire(bytes);
    if (bytes) DQ_CUDA(cudaMemsetAsync(block.get(), 0, bytes, stream_));
    return Tensor::wrap(block.get(), shape, dtype, Device::cuda, block);
  }

  void upload(const Tensor& host, Tensor& dst) override {
    check_bytes(host, Device::cpu, dst, Device::cuda, "upload");
    transfer(dst.raw(), host.raw(), host.nbytes(), cudaMemcpyHostToDevice);
  }

  void download(const Tensor& src, Tensor& host) override {
    check_bytes(src, Device::cuda, host, Device::cpu, "download");
    transfer(host.raw(), src.raw(), src.nbytes(), cudaMemcpyDeviceToHost);
  }

  void copy(const Tensor& src, Tensor& dst) override {
    check_bytes(src, Device::cuda, dst, Device::cuda, "copy");
    if (src.nbytes() > 0 && src.raw() != dst.raw())
      DQ_CUDA(
          cudaMemcpyAsync(dst.raw(), src.raw(), src.nbytes(), cudaMemcpyDeviceToDevice, stream_));
  }

  void fill(Tensor& t, float value) override {
    check_f32(t, kDev, "fill", "t");
    cuda_fill(fp(t), value, t.numel(), stream_);
  }

  void axpy(float a, const Tensor& x, Tensor& y) override {
    check_same(x, y, kDev, "axpy", "x", "y");
    cuda_axpy(a, fp(x), fp(y), x.numel(), stream_);
  }

  void scale(Tensor& x, float a) override {
    check_f32(x, kDev, "scale", "x");
    cuda_scale(fp(x), a, x.numel(), stream_);
  }

  // ------------------------------------------------------- convolutions
  void conv3d_forward(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y,
                      bool fuse_relu) override {
    const char* op = "conv3d_forward";
    ConvGeometry g = conv_geometry(x, w, kDev, op, "x", "w");
    check_bias(b, g.co, kDev, op, "b");
    check_f32(y, kDev, op, "y");
    check_shape(y, output_shape(g), op, "y");
    conv_->forward(g, fp(x), fp(w), fp(b), fp(y), fuse_relu);
  }

  void conv3d_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx) override {
    const char* op = "conv3d_backward_data";
    ConvGeometry g = conv_geometry(dx, w, kDev, op, "dx", "w");
    check_f32(dy, kDev, op, "dy");
    check_shape(dy, output_shape(g), op, "dy");
    conv_->backward_data(g, fp(dy), fp(w), fp(dx));
  }

  void conv3d_backward_filter(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* db) override {
    const char* op = "conv3d_backward_filter";
    ConvGeometry g = conv_geometry(x, dw, kDev, op, "x", "dw");
    check_bias(db, g.co, kDev, op, "db");
    check_f32(dy, kDev, op, "dy");
    check_shape(dy, output_shape(g), op, "dy");
    conv_->backward_filter(g, fp(x), fp(dy), fp(dw), fp(db));
  }

  void deconv3d_forward(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y,
                        bool fuse_relu) override {
    const char* op = "deconv3d_forward";
    ConvGeometry g = deconv_geometry(x, w, kDev, op, "x", "w");
    check_bias(b, g.co, kDev, op, "b");
    check_f32(y, kDev, op, "y");
    check_shape(y, output_shape(g), op, "y");
    conv_->forward(g, fp(x), fp(w), fp(b), fp(y), fuse_relu);
  }

  void deconv3d_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx) override {
    const char* op = "deconv3d_backward_data";
    ConvGeometry g = deconv_geometry(dx, w, kDev, op, "dx", "w");
    check_f32(dy, kDev, op, "dy");
    check_shape(dy, output_shape(g), op, "dy");
    conv_->backward_data(g, fp(dy), fp(w), fp(dx));
  }

  void deconv3d_backward_filter(const Tensor& x, const Tensor& dy, Tensor& dw,
                                Tensor* db) override {
    const char* op = "deconv3d_backward_filter";
    ConvGeometry g = deconv_geometry(x, dw, kDev, op, "x", "dw");
    check_bias(db, g.co, kDev, op, "db");
    check_f32(dy, kDev, op, "dy");
    check_shape(dy, output_shape(g), op, "dy");
    conv_->backward_filter(g, fp(x), fp(dy), fp(dw), fp(db));
  }

  // ------------------------------------------------------------ pooling
  void maxpool_forward(const Tensor& x, Tensor& y) override {
    pool_shape(x, y, "maxpool_forward");
    const Shape& s = x.shape();
    cuda_maxpool_forward(fp(x), fp(y), s[0], s[1], s[2], s[3], s[4], stream_);
  }

  void maxpool_backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) override {
    const char* op = "maxpool_backward";
    pool_shape(x, y, op);
    check_same(y, dy, kDev, op, "y", "dy");
    check_same(x, dx, kDev, op, "x", "dx");
    const Shape& s = x.shape();
    cuda_maxpool_backward(fp(x), fp(dy), fp(dx), s[0], s[1], s[2], s[3], s[4], stream_);
  }

  // ---------------------------------------------------------- pointwise
  void relu_forward(const Tensor& x, Tensor& y) override {
    check_same(x, y, kDev, "relu_forward", "x", "y");
    cuda_relu_forward(fp(x), fp(y), x.numel(), stream_);
  }

  void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) override {
    const char* op = "relu_backward";
    check_same(y, dy, kDev, op, "y", "dy");
    check_same(y, dx, kDev, op, "y", "dx");
    cuda_relu_backward(fp(y), fp(dy), fp(dx), y.numel(), stream_);
  }

  void dropout_forward_at(const Tensor& x, Tensor& y, float p, uint64_t key,
                          uint64_t offset) override {
    check_same(x, y, kDev, "dropout_forward", "x", "y");
    cuda_dropout_forward(fp(x), fp(y), x.numel(), p, key, stream_, offset);
  }

  void dropout_backward_at(const Tensor& dy, Tensor& dx, float p, uint64_t key,
                           uint64_t offset) override {
    check_same(dy, dx, kDev, "dropout_backward", "dy", "dx");
    cuda_dropout_backward(fp(dy), fp(dx), dy.numel(), p, key, stream_, offset);
  }

  void concat_channels(const Tensor& a, const Tensor& b, Tensor& out) override {
    int64_t rows = check_concat(a, b, out, kDev, "concat_channels");
    cuda_concat_channels(fp(a), fp(b), fp(out), rows, channels(a), channels(b), stream_);
  }

  void split_channels(const Tensor& out, Tensor& a, Tensor& b) override {
    int64_t rows = check_concat(a, b, out, kDev, "split_channels");
    cuda_split_channels(fp(out), fp(a), fp(b), rows, channels(a), channels(b), stream_);
  }

  // ------------------------------------------------------- loss, optimiser
  float mse_loss(const Tensor& pred, const Tensor& target, Tensor* dpred) override {
    const char* op = "mse_loss";
    check_same(pred, target, kDev, op, "pred", "target");
    if (dpred) check_same(pred, *dpred, kDev, op, "pred", "dpred");
    DQ_CHECK(pred.numel() > 0, op, ": pred ", pred.shape().str(), " is empty");
    double* partials = static_cast<double*>(mse_scratch_.get());
    float* loss = reinterpret_cast<float*>(partials + kMseMaxBlocks);
    cuda_mse_loss(fp(pred), fp(target), fp(dpred), pred.numel(), partials, loss, stream_);
    float host = 0.0f;
    transfer(&host, loss, sizeof(float), cudaMemcpyDeviceToHost);
    return host;
  }

  void adam_step(Tensor& params, const Tensor& grads, Tensor& m, Tensor& v, const AdamConfig& cfg,
                 int64_t step) override {
    check_adam(params, grads, m, v, step, kDev);
    cuda_adam_step(fp(params), fp(grads), fp(m), fp(v), params.numel(), cfg, step, stream_);
  }

  bool unscale_and_check(Tensor& grads, float inv_scale) override {
    check_f32(grads, kDev, "unscale_and_check", "grads");
    int* flag = static_cast<int*>(flag_.get());
    DQ_CUDA(cudaMemsetAsync(flag, 0, sizeof(int), stream_));
    cuda_unscale_check(fp(grads), grads.numel(), inv_scale, flag, stream_);
    int host = 0;
    transfer(&host, flag, sizeof(int), cudaMemcpyDeviceToHost);
    return host == 0;
  }

 private:
  static void pool_shape(const Tensor& x, const Tensor& y, const char* op) {
    check_activation(x, kDev, op, "x");
    check_f32(y, kDev, op, "y");
    const Shape& s = x.shape();
    DQ_CHECK(s[1] % 2 == 0 && s[2] % 2 == 0 && s[3] % 2 == 0, op, ": x ", s.str(),
             " must have even D, H and W for 2x2x2 pooling");
    check_shape(y, Shape{s[0], s[1] / 2, s[2] / 2, s[3] / 2, s[4]}, op, "y");
  }

  static int64_t channels(const Tensor& t) { return t.shape()[t.shape().rank() - 1]; }

  static void check_bytes(const Tensor& src, Device src_dev, const Tensor& dst, Device dst_dev,
                          const char* op) {
    DQ_CHECK(src.device() == src_dev && dst.device() == dst_dev, op, ": expected ",
             device_name(src_dev), " -> ", device_name(dst_dev), ", got ",
             device_name(src.device()), " -> ", device_name(dst.device()));
    DQ_CHECK(src.dtype() == dst.dtype() && src.numel() == dst.numel(), op, ": source ",
             dtype_name(src.dtype()), " ", src.shape().str(), " does not fit destination ",
             dtype_name(dst.dtype()), " ", dst.shape().str());
  }

  // A copy the host waits for: queued behind the stream's work, so a
  // download sees every op issued before it.
  void transfer(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
    if (bytes == 0) return;
    DQ_CUDA(cudaMemcpyAsync(dst, src, bytes, kind, stream_));
    DQ_CUDA(cudaStreamSynchronize(stream_));
  }

  std::string name_;
  cudaStream_t stream_ = nullptr;
  std::shared_ptr<DevicePool> pool_;
  std::unique_ptr<CudnnConv> conv_;
  std::shared_ptr<void> mse_scratch_;
  std::shared_ptr<void> flag_;
};

const CudaBackend& as_cuda(const Backend& be) {
  const auto* cb = dynamic_cast<const CudaBackend*>(&be);
  if (!cb) fail("expected the CUDA backend, got '", be.name(), "'");
  return *cb;
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(const CudaBackendOptions& opt) {
  return std::make_unique<CudaBackend>(opt);
}

cudaStream_t cuda_stream(const Backend& be) {
  return as_cuda(be).stream();
}
DevicePoolStats cuda_pool_stats(const Backend& be) {
  return as_cuda(be).pool_stats();
}
std::string cuda_conv_report(const Backend& be) {
  return as_cuda(be).conv_report();
}

}  // namespace dq
