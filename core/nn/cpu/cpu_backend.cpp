// The CPU backend: argument checks, then oneDNN for the convolutions
// (core/nn/cpu/onednn_conv.cpp) and max-pooling (core/nn/cpu/onednn_pool.cpp), and
// plain loops for everything else. The loops are
// written to be read as the spec of each op in core/nn/backend.h.
#include "core/nn/cpu/cpu_backend.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <vector>

#include "core/error.h"
#include "core/nn/cpu/onednn_conv.h"
#include "core/nn/cpu/onednn_pool.h"
#include "core/nn/op_checks.h"
#include "core/nn/philox.h"
#include "core/parallel.h"

namespace dq {
namespace {

constexpr int64_t kGrain = kPointwiseGrain;

constexpr Device kDev = Device::cpu;

class CpuBackend final : public Backend {
 public:
  Device device() const override { return Device::cpu; }
  std::string name() const override { return "cpu (oneDNN " + cpu::onednn_version() + ")"; }

  // ------------------------------------------------------------- memory
  // Zeroed on the thread pool: zeroing is the first touch of a new shape's
  // buffers, whose page faults ran on one thread (a single 160^3 inference
  // pass on 2 cores: network 1.6-2.5 s before, 1.4-1.8 s after).
  Tensor alloc(const Shape& shape, DType dtype) override {
    return Tensor::zeros_parallel(shape, dtype);
  }

  void upload(const Tensor& host, Tensor& dst) override { copy_bytes(host, dst, "upload"); }
  void download(const Tensor& src, Tensor& host) override { copy_bytes(src, host, "download"); }
  void copy(const Tensor& src, Tensor& dst) override { copy_bytes(src, dst, "copy"); }

  void fill(Tensor& t, float value) override {
    check_f32(t, kDev, "fill", "t");
    float* p = t.f32();
    parallel_for(t.numel(), kGrain,
                 [=](int64_t i0, int64_t i1) { std::fill(p + i0, p + i1, value); });
  }

  void axpy(float a, const Tensor& x, Tensor& y) override {
    check_same(x, y, kDev, "axpy", "x", "y");
    const float* xp = x.f32();
    float* yp = y.f32();
    parallel_for(x.numel(), kGrain, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) yp[i] += a * xp[i];
    });
  }

  void scale(Tensor& x, float a) override {
    check_f32(x, kDev, "scale", "x");
    float* p = x.f32();
    parallel_for(x.numel(), kGrain, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) p[i] *= a;
    });
  }

  // ------------------------------------------------------- convolutions
  void conv3d_forward(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y,
                      bool fuse_relu) override {
    const char* op = "conv3d_forward";
    cpu::ConvShape s = conv_geometry(x, w, kDev, op, "x", "w");
    check_bias(b, s.co, kDev, op, "b");
    check_f32(y, kDev, op, "y");
    check_shape(y, output_shape(s), op, "y");
    conv_.forward(s, x.f32(), w.f32(), b ? b->f32() : nullptr, y.f32(), fuse_relu);
  }

  void conv3d_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx) override {
    const char* op = "conv3d_backward_data";
    cpu::ConvShape s = conv_geometry(dx, w, kDev, op, "dx", "w");
    check_f32(dy, kDev, op, "dy");
    check_shape(dy, output_shape(s), op, "dy");
    conv_.backward_data(s, dy.f32(), w.f32(), dx.f32());
  }

  void conv3d_backward_filter(const Tensor& x, const Tensor& dy, Tensor& dw, Tensor* db) override {
    const char* op = "conv3d_backward_filter";
    cpu::ConvShape s = conv_geometry(x, dw, kDev, op, "x", "dw");
    check_bias(db, s.co, kDev, op, "db");
    check_f32(dy, kDev, op, "dy");
    check_shape(dy, output_shape(s), op, "dy");
    conv_.backward_filter(s, x.f32(), dy.f32(), dw.f32(), db ? db->f32() : nullptr);
  }

  void deconv3d_forward(const Tensor& x, const Tensor& w, const Tensor* b, Tensor& y,
                        bool fuse_relu) override {
    const char* op = "deconv3d_forward";
    cpu::ConvShape s = deconv_geometry(x, w, kDev, op, "x", "w");
    check_bias(b, s.co, kDev, op, "b");
    check_f32(y, kDev, op, "y");
    check_shape(y, output_shape(s), op, "y");
    conv_.forward(s, x.f32(), w.f32(), b ? b->f32() : nullptr, y.f32(), fuse_relu);
  }

  void deconv3d_backward_data(const Tensor& dy, const Tensor& w, Tensor& dx) override {
    const char* op = "deconv3d_backward_data";
    cpu::ConvShape s = deconv_geometry(dx, w, kDev, op, "dx", "w");
    check_f32(dy, kDev, op, "dy");
    check_shape(dy, output_shape(s), op, "dy");
    conv_.backward_data(s, dy.f32(), w.f32(), dx.f32());
  }

  void deconv3d_backward_filter(const Tensor& x, const Tensor& dy, Tensor& dw,
                                Tensor* db) override {
    const char* op = "deconv3d_backward_filter";
    cpu::ConvShape s = deconv_geometry(x, dw, kDev, op, "x", "dw");
    check_bias(db, s.co, kDev, op, "db");
    check_f32(dy, kDev, op, "dy");
    check_shape(dy, output_shape(s), op, "dy");
    conv_.backward_filter(s, x.f32(), dy.f32(), dw.f32(), db ? db->f32() : nullptr);
  }

  // ------------------------------------------------------------ pooling
  // Plain loops rather than oneDNN: its backward pass needs a workspace from
  // the forward (our interface passes x and y instead), and the tie rule
  // (first maximum in window order) must hold exactly on every backend.
  void maxpool_forward(const Tensor& x, Tensor& y) override {
    Pool p = pool_shape(x, y, "maxpool_forward");
    pool_.forward(p.n, 2 * p.d, 2 * p.h, 2 * p.w, p.c, x.f32(), y.f32());
  }

  void maxpool_backward(const Tensor& x, const Tensor& y, const Tensor& dy, Tensor& dx) override {
    const char* op = "maxpool_backward";
    Pool p = pool_shape(x, y, op);
    check_same(y, dy, kDev, op, "y", "dy");
    check_same(x, dx, kDev, op, "x", "dx");
    // The argmax is recomputed from x (oneDNN's training-mode workspace), so
    // y is only checked; windows do not overlap, so dx is fully overwritten.
    pool_.backward(p.n, 2 * p.d, 2 * p.h, 2 * p.w, p.c, x.f32(), dy.f32(), dx.f32());
  }

  // ---------------------------------------------------------- pointwise
  void relu_forward(const Tensor& x, Tensor& y) override {
    check_same(x, y, kDev, "relu_forward", "x", "y");
    const float* xp = x.f32();
    float* yp = y.f32();
    parallel_for(x.numel(), kGrain, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) yp[i] = xp[i] > 0.0f ? xp[i] : 0.0f;
    });
  }

  void relu_backward(const Tensor& y, const Tensor& dy, Tensor& dx) override {
    const char* op = "relu_backward";
    check_same(y, dy, kDev, op, "y", "dy");
    check_same(y, dx, kDev, op, "y", "dx");
    const float* yp = y.f32();
    const float* dyp = dy.f32();
    float* dxp = dx.f32();
    parallel_for(y.numel(), kGrain, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) dxp[i] = yp[i] > 0.0f ? dyp[i] : 0.0f;
    });
  }

  void dropout_forward_at(const Tensor& x, Tensor& y, float p, uint64_t key,
                          uint64_t offset) override {
    check_same(x, y, kDev, "dropout_forward", "x", "y");
    dropout(x.f32(), y.f32(), x.numel(), p, key, offset, "dropout_forward");
  }

  void dropout_backward_at(const Tensor& dy, Tensor& dx, float p, uint64_t key,
                           uint64_t offset) override {
    check_same(dy, dx, kDev, "dropout_backward", "dy", "dx");
    dropout(dy.f32(), dx.f32(), dy.numel(), p, key, offset, "dropout_backward");
  }

  void concat_channels(const Tensor& a, const Tensor& b, Tensor& out) override {
    int64_t rows = check_concat(a, b, out, kDev, "concat_channels");
    int64_t ca = a.shape()[a.shape().rank() - 1], cb = b.shape()[b.shape().rank() - 1];
    const float* ap = a.f32();
    const float* bp = b.f32();
    float* op = out.f32();
    parallel_for(rows, std::max<int64_t>(1, kGrain / (ca + cb)), [=](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        std::memcpy(op + r * (ca + cb), ap + r * ca, sizeof(float) * ca);
        std::memcpy(op + r * (ca + cb) + ca, bp + r * cb, sizeof(float) * cb);
      }
    });
  }

  void split_channels(const Tensor& out, Tensor& a, Tensor& b) override {
    int64_t rows = check_concat(a, b, out, kDev, "split_channels");
    int64_t ca = a.shape()[a.shape().rank() - 1], cb = b.shape()[b.shape().rank() - 1];
    const float* op = out.f32();
    float* ap = a.f32();
    float* bp = b.f32();
    parallel_for(rows, std::max<int64_t>(1, kGrain / (ca + cb)), [=](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        std::memcpy(ap + r * ca, op + r * (ca + cb), sizeof(float) * ca);
        std::memcpy(bp + r * cb, op + r * (ca + cb) + ca, sizeof(float) * cb);
      }
    });
  }

  // ------------------------------------------------------- loss, optimiser
  float mse_loss(const Tensor& pred, const Tensor& target, Tensor* dpred) override {
    const char* op = "mse_loss";
    check_same(pred, target, kDev, op, "pred", "target");
    if (dpred) check_same(pred, *dpred, kDev, op, "pred", "dpred");
    int64_t n = pred.numel();
    DQ_CHECK(n > 0, op, ": pred ", pred.shape().str(), " is empty");
    const float* pp = pred.f32();
    const float* tp = target.f32();
    // One serial pass in index order: the loss is bit-reproducible whatever
    // the thread count.
    double sum = 0.0;
    for (int64_t i = 0; i < n; ++i) {
      double e = static_cast<double>(pp[i]) - static_cast<double>(tp[i]);
      sum += e * e;
    }
    if (dpred) {
      float k = 2.0f / static_cast<float>(n);
      float* gp = dpred->f32();
      parallel_for(n, kGrain, [=](int64_t i0, int64_t i1) {
        for (int64_t i = i0; i < i1; ++i) gp[i] = k * (pp[i] - tp[i]);
      });
    }
    return static_cast<float>(sum / static_cast<double>(n));
  }

  void adam_step(Tensor& params, const Tensor& grads, Tensor& m, Tensor& v, const AdamConfig& cfg,
                 int64_t step) override {
    check_adam(params, grads, m, v, step, kDev);
    // Bias corrections in double as PyTorch does (Python floats), then the
    // element loop in fp32 in PyTorch's order: p -= step_size * m / denom.
    double t = static_cast<double>(step);
    float step_size = static_cast<float>(cfg.lr / (1.0 - std::pow(double{cfg.beta1}, t)));
    float bc2_sqrt = static_cast<float>(std::sqrt(1.0 - std::pow(double{cfg.beta2}, t)));
    float b1 = cfg.beta1, b2 = cfg.beta2, eps = cfg.eps;
    float* pp = params.f32();
    const float* gp = grads.f32();
    float* mp = m.f32();
    float* vp = v.f32();
    parallel_for(params.numel(), kGrain, [=](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        float g = gp[i];
        mp[i] = b1 * mp[i] + (1.0f - b1) * g;
        vp[i] = b2 * vp[i] + (1.0f - b2) * g * g;
        float denom = std::sqrt(vp[i]) / bc2_sqrt + eps;
        pp[i] -= step_size * (mp[i] / denom);
      }
    });
  }

  bool unscale_and_check(Tensor& grads, float inv_scale) override {
    check_f32(grads, kDev, "unscale_and_check", "grads");
    float* gp = grads.f32();
    // Any chunk that meets a non-finite value stores the same true, so the
    // answer does not depend on the thread count.
    std::atomic<bool> bad{false};
    parallel_for(grads.numel(), kGrain, [=, &bad](int64_t i0, int64_t i1) {
      bool chunk_bad = false;
      for (int64_t i = i0; i < i1; ++i) {
        gp[i] *= inv_scale;
        chunk_bad = chunk_bad || !std::isfinite(gp[i]);
      }
      if (chunk_bad) bad.store(true, std::memory_order_relaxed);
    });
    return !bad.load(std::memory_order_relaxed);
  }

 private:
  // Pooling geometry: x (n, 2d, 2h, 2w, c) -> y (n, d, h, w, c).
  struct Pool {
    int64_t n, d, h, w, c;
  };

  static Pool pool_shape(const Tensor& x, const Tensor& y, const char* op) {
    check_activation(x, kDev, op, "x");
    check_f32(y, kDev, op, "y");
    const Shape& s = x.shape();
    DQ_CHECK(s[1] % 2 == 0 && s[2] % 2 == 0 && s[3] % 2 == 0, op, ": x ", s.str(),
             " must have even D, H and W for 2x2x2 pooling");
    Pool p{s[0], s[1] / 2, s[2] / 2, s[3] / 2, s[4]};
    check_shape(y, Shape{p.n, p.d, p.h, p.w, p.c}, op, "y");
    return p;
  }

  static void copy_bytes(const Tensor& src, Tensor& dst, const char* op) {
    DQ_CHECK(src.device() == Device::cpu && dst.device() == Device::cpu, op,
             ": the cpu backend copies host tensors only, got ", device_name(src.device()), " -> ",
             device_name(dst.device()));
    DQ_CHECK(src.dtype() == dst.dtype() && src.numel() == dst.numel(), op, ": source ",
             dtype_name(src.dtype()), " ", src.shape().str(), " does not fit destination ",
             dtype_name(dst.dtype()), " ", dst.shape().str());
    if (src.nbytes() > 0 && src.raw() != dst.raw()) std::memcpy(dst.raw(), src.raw(), src.nbytes());
  }

  // y[i] = x[i] / (1 - p) where philox_uniform(key, offset + i) >= p, else
  // 0. The backward pass is the same map applied to dy.
  static void dropout(const float* x, float* y, int64_t n, float p, uint64_t key, uint64_t offset,
                      const char* op) {
    DQ_CHECK(p >= 0.0f && p < 1.0f, op, ": drop probability must be in [0, 1), got ", p);
    if (n <= 0) return;
    float keep_scale = 1.0f / (1.0f - p);
    // One Philox call serves the four indices 4g .. 4g+3; the groups are
    // those of the global indices offset .. offset + n - 1.
    const uint64_t g_first = offset / 4, g_end = (offset + static_cast<uint64_t>(n) + 3) / 4;
    parallel_for(static_cast<int64_t>(g_end - g_first), kGrain / 32, [=](int64_t g0, int64_t g1) {
      float u[4];
      for (int64_t gl = g0; gl < g1; ++gl) {
        const uint64_t g = g_first + static_cast<uint64_t>(gl);
        philox_uniform4(key, g, u);
        for (uint64_t j = 0; j < 4; ++j) {
          const uint64_t gi = 4 * g + j;
          if (gi < offset || gi >= offset + static_cast<uint64_t>(n)) continue;
          const int64_t i = static_cast<int64_t>(gi - offset);
          y[i] = u[j] >= p ? x[i] * keep_scale : 0.0f;
        }
      }
    });
  }

  cpu::OnednnConv conv_;
  cpu::OnednnPool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() {
  return std::make_unique<CpuBackend>();
}

}  // namespace dq
