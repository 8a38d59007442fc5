#include "core/nn/cpu/onednn_conv.h"

#include <algorithm>
#include <dnnl.hpp>
#include <sstream>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"

namespace dq::cpu {
namespace {

using dnnl::algorithm;
using dnnl::memory;
using dnnl::prop_kind;
using tag = memory::format_tag;

// oneDNN describes tensors by logical dimensions (N, C, D, H, W) for
// activations and (O, I, D, H, W) for weights; our layouts enter only
// through the format tags.
struct Geometry {
  memory::dims src, dst, weights, strides, pad;
  tag weights_tag;
};

Geometry geometry(const ConvShape& s) {
  Geometry g;
  g.src = {s.n, s.ci, s.d, s.h, s.w};
  if (s.transposed) {
    g.dst = {s.n, s.co, 2 * s.d, 2 * s.h, 2 * s.w};
    // Our (Ci, 2, 2, 2, Co) is oneDNN's deconvolution weights (O = Co,
    // I = Ci, D, H, W) stored in the order I, D, H, W, O.
    g.weights = {s.co, s.ci, 2, 2, 2};
    g.weights_tag = tag::idhwo;
    g.strides = {2, 2, 2};
    g.pad = {0, 0, 0};
  } else {
    g.dst = {s.n, s.co, s.d, s.h, s.w};
    // Our (Co, k, k, k, Ci) is (O, I, D, H, W) stored O, D, H, W, I.
    g.weights = {s.co, s.ci, s.k, s.k, s.k};
    g.weights_tag = tag::odhwi;
    g.strides = {1, 1, 1};
    g.pad = {s.k / 2, s.k / 2, s.k / 2};
  }
  return g;
}

memory::desc activation_md(const memory::dims& dims) {
  return memory::desc(dims, memory::data_type::f32, tag::ndhwc);
}
// Lets the primitive pick its preferred (blocked) weights layout; weights are
// small, so reordering them each call is cheap next to the convolution.
memory::desc any_md(const memory::dims& dims) {
  return memory::desc(dims, memory::data_type::f32, tag::any);
}
// A zero descriptor tells oneDNN there is no bias.
memory::desc bias_md(const Geometry& g, bool bias) {
  return bias ? memory::desc({g.dst[1]}, memory::data_type::f32, tag::a) : memory::desc();
}

enum class Pass { forward, backward_data, backward_filter };

std::string cache_key(Pass pass, const ConvShape& s, bool bias, bool relu) {
  std::ostringstream os;
  os << static_cast<int>(pass) << (s.transposed ? 't' : 'c') << s.n << ',' << s.d << ',' << s.h
     << ',' << s.w << ',' << s.ci << ',' << s.co << ',' << s.k << (bias ? 'b' : '-')
     << (relu ? 'r' : '-');
  return os.str();
}

}  // namespace

// A built primitive with the descriptors of its arguments. When the
// primitive chose a weights layout other than ours, `theirs` holds the
// weights in its layout and `convert` moves them (ours -> theirs before the
// forward and backward-data passes, theirs -> ours after backward-filter).
struct Plan {
  dnnl::primitive prim;
  memory::desc src, dst, bias, ours;
  memory theirs;
  dnnl::reorder convert;
};

// The transposed convolution's forward pass as matrix products. Our weights
// (Ci, 2, 2, 2, Co) are the matrix W (Ci, 8 Co), so for a slab of input voxels
// X (rows, Ci) the product T = X W (rows, 8 Co) holds each voxel's eight output
// vectors; they are then stored at their 2x2x2 places with the bias and ReLU.
// oneDNN 2.6's deconvolution ran its fused ReLU through a slow path (0.72 s
// for the last 16 -> 8 layer of a 160³ pass, half the network's time, 0.09 s
// without the ReLU); the scatter is a copy with the bias and ReLU folded in.
// The product is a 1x1x1 convolution (Ci -> 8 Co channels) over the slab, not
// a oneDNN matmul: the AVX2 matmul (gemm:jit) splits its sums differently for
// different thread counts (a 1000x16x64 product differed between 1 and 2
// threads), a forward convolution splits only over voxels and channels, so
// the output does not depend on the thread count.
struct UpPlan {
  Plan product;              // the 1x1x1 convolution over one slab
  int64_t slices = 1;        // (n, d) input slices per product, a divisor of n * d
  std::vector<float> t_buf;  // (slices * h * w, 8 * co)
};

// T is kept to at most 4 MiB (2^20 floats) where one slice allows: the
// largest divisor q of n * d with q * h * w * 8 co <= 2^20, at least 1.
int64_t up_slices(const ConvShape& s) {
  constexpr int64_t kMaxFloats = int64_t{1} << 20;
  const int64_t total = s.n * s.d;
  int64_t best = 1;
  for (int64_t q = 2; q <= total; ++q)
    if (total % q == 0 && q * s.h * s.w * 8 * s.co <= kMaxFloats) best = q;
  return best;
}

// y rows of one input slab: t (slices * h * w, 8 co) -> y planes 2 j, 2 j + 1
// of each slice j, adding the bias (tiled twice: b2 holds 2 co values, zeros
// when there is none) and clamping at zero when relu. The slab's (slice, h)
// rows are independent, so [r0, r1) of them may run on a thread of its own.
void scatter_up(const ConvShape& s, const float* t, const float* b2, bool relu, int64_t first_slice,
                int64_t r0, int64_t r1, float* y) {
  const int64_t co2 = 2 * s.co, row = 2 * s.w * s.co;  // values per output row
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t j = r / s.h, h = r % s.h;
    const float* tr = t + r * s.w * 8 * s.co;
    for (int64_t a = 0; a < 2; ++a)
      for (int64_t b = 0; b < 2; ++b) {
        float* __restrict yo = y + ((2 * (first_slice + j) + a) * 2 * s.h + 2 * h + b) * row;
        const float* __restrict ti = tr + (2 * a + b) * co2;
        for (int64_t w = 0; w < s.w; ++w, yo += co2, ti += 8 * s.co) {
          if (relu)  // std::max keeps a NaN, as oneDNN's ReLU does
            for (int64_t k = 0; k < co2; ++k) yo[k] = std::max(ti[k] + b2[k], 0.0f);
          else
            for (int64_t k = 0; k < co2; ++k) yo[k] = ti[k] + b2[k];
        }
      }
  }
}

struct OnednnConv::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::unordered_map<std::string, Plan> plans;
  std::unordered_map<std::string, UpPlan> ups;
  std::vector<float> bias2;

  UpPlan& up_plan(const ConvShape& s) {
    std::string key = cache_key(Pass::forward, s, false, false);
    auto it = ups.find(key);
    if (it != ups.end()) return it->second;
    UpPlan p;
    p.slices = up_slices(s);
    const int64_t rows = p.slices * s.h * s.w;
    Geometry g;
    g.src = {1, s.ci, p.slices, s.h, s.w};
    g.dst = {1, 8 * s.co, p.slices, s.h, s.w};
    g.weights = {8 * s.co, s.ci, 1, 1, 1};
    g.weights_tag = tag::idhwo;  // (O, I) stored I, O: our (Ci, 8 Co)
    g.strides = {1, 1, 1};
    g.pad = {0, 0, 0};
    Plan& c = p.product;
    c.src = activation_md(g.src);
    c.dst = activation_md(g.dst);
    c.ours = memory::desc(g.weights, memory::data_type::f32, g.weights_tag);
    try {
      auto pd =
          forward_pd<dnnl::convolution_forward>(g, algorithm::convolution_direct, false, false);
      attach_weights(c, pd.weights_desc(), false);
      c.prim = dnnl::convolution_forward(pd);
    } catch (const dnnl::error& e) {
      fail("oneDNN could not build the ", rows, "x", s.ci, "x", 8 * s.co,
           " product of a transposed convolution: ", e.what());
    }
    p.t_buf.resize(static_cast<size_t>(rows * 8 * s.co));
    return ups.emplace(key, std::move(p)).first->second;
  }

  void up_forward(const ConvShape& s, const float* x, const float* w, const float* b, float* y,
                  bool relu) {
    UpPlan& p = up_plan(s);
    bias2.assign(static_cast<size_t>(2 * s.co), 0.0f);
    if (b) {
      std::copy(b, b + s.co, bias2.begin());
      std::copy(b, b + s.co, bias2.begin() + s.co);
    }
    const float* b2 = bias2.data();
    Plan& c = p.product;
    memory wm = weights_in(c, w), tm = wrap(c.dst, p.t_buf.data());
    const int64_t slab_rows = p.slices * s.h;  // (slice, h) rows per slab
    const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (8 * s.w * s.co));
    for (int64_t first = 0; first < s.n * s.d; first += p.slices) {
      c.prim.execute(stream, {{DNNL_ARG_SRC, wrap(c.src, x + first * s.h * s.w * s.ci)},
                              {DNNL_ARG_WEIGHTS, wm},
                              {DNNL_ARG_DST, tm}});
      stream.wait();
      const float* t = p.t_buf.data();
      parallel_for(slab_rows, grain,
                   [&](int64_t r0, int64_t r1) { scatter_up(s, t, b2, relu, first, r0, r1, y); });
    }
  }

  memory wrap(const memory::desc& md, const float* p) {
    return memory(md, engine, const_cast<float*>(p));
  }

  // Sets up `theirs` and `convert` when `chosen` differs from our layout.
  void attach_weights(Plan& p, const memory::desc& chosen, bool to_ours) {
    if (chosen == p.ours) return;
    p.theirs = memory(chosen, engine);
    const memory::desc& from = to_ours ? chosen : p.ours;
    const memory::desc& to = to_ours ? p.ours : chosen;
    p.convert = dnnl::reorder(dnnl::reorder::primitive_desc(engine, from, engine, to));
  }

  template <class Fwd>
  typename Fwd::primitive_desc forward_pd(const Geometry& g, algorithm alg, bool bias, bool relu) {
    typename Fwd::desc d(prop_kind::forward_training, alg, activation_md(g.src), any_md(g.weights),
                         bias_md(g, bias), activation_md(g.dst), g.strides, g.pad, g.pad);
    dnnl::primitive_attr attr;
    if (relu) {
      dnnl::post_ops ops;
      ops.append_eltwise(1.0f, algorithm::eltwise_relu, 0.0f, 0.0f);
      attr.set_post_ops(ops);
    }
    return typename Fwd::primitive_desc(d, attr, engine);
  }

  // Fwd, BwdData, BwdWeights are oneDNN's convolution or deconvolution
  // primitives, whose descriptors take the same arguments.
  template <class Fwd, class BwdData, class BwdWeights>
  Plan build(Pass pass, const ConvShape& s, algorithm alg, bool bias, bool relu) {
    Geometry g = geometry(s);
    Plan p;
    p.src = activation_md(g.src);
    p.dst = activation_md(g.dst);
    p.bias = bias_md(g, bias);
    p.ours = memory::desc(g.weights, memory::data_type::f32, g.weights_tag);
    if (pass == Pass::forward) {
      auto pd = forward_pd<Fwd>(g, alg, bias, relu);
      attach_weights(p, pd.weights_desc(), false);
      p.prim = Fwd(pd);
    } else if (pass == Pass::backward_data) {
      auto hint = forward_pd<Fwd>(g, alg, false, false);
      typename BwdData::desc d(alg, p.src, any_md(g.weights), p.dst, g.strides, g.pad, g.pad);
      typename BwdData::primitive_desc pd(d, engine, hint);
      attach_weights(p, pd.weights_desc(), false);
      p.prim = BwdData(pd);
    } else {
      auto hint = forward_pd<Fwd>(g, alg, bias, false);
      typename BwdWeights::desc d(alg, p.src, any_md(g.weights), p.bias, p.dst, g.strides, g.pad,
                                  g.pad);
      typename BwdWeights::primitive_desc pd(d, engine, hint);
      attach_weights(p, pd.diff_weights_desc(), true);
      p.prim = BwdWeights(pd);
    }
    return p;
  }

  Plan& plan(Pass pass, const ConvShape& s, bool bias, bool relu) {
    std::string key = cache_key(pass, s, bias, relu);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    try {
      Plan p = s.transposed ? build<dnnl::deconvolution_forward, dnnl::deconvolution_backward_data,
                                    dnnl::deconvolution_backward_weights>(
                                  pass, s, algorithm::deconvolution_direct, bias, relu)
                            : build<dnnl::convolution_forward, dnnl::convolution_backward_data,
                                    dnnl::convolution_backward_weights>(
                                  pass, s, algorithm::convolution_direct, bias, relu);
      return plans.emplace(key, std::move(p)).first->second;
    } catch (const dnnl::error& e) {
      fail("oneDNN could not build a ", s.transposed ? "transposed " : "",
           "convolution for input (", s.n, ", ", s.d, ", ", s.h, ", ", s.w, ", ", s.ci, ") -> ",
           s.co, " channels: ", e.what());
    }
  }

  // Our weights, converted into the primitive's layout when it wants another.
  memory weights_in(Plan& p, const float* w) {
    memory ours = wrap(p.ours, w);
    if (!p.theirs) return ours;
    p.convert.execute(stream, ours, p.theirs);
    return p.theirs;
  }
};

OnednnConv::OnednnConv() : impl_(std::make_unique<Impl>()) {}
OnednnConv::~OnednnConv() = default;

void OnednnConv::forward(const ConvShape& s, const float* x, const float* w, const float* b,
                         float* y, bool relu) {
  Impl& m = *impl_;
  if (s.transposed) {
    m.up_forward(s, x, w, b, y, relu);
    return;
  }
  Plan& p = m.plan(Pass::forward, s, b != nullptr, relu);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, m.wrap(p.src, x)},
                                       {DNNL_ARG_WEIGHTS, m.weights_in(p, w)},
                                       {DNNL_ARG_DST, m.wrap(p.dst, y)}};
  if (b) args.emplace(DNNL_ARG_BIAS, m.wrap(p.bias, b));
  p.prim.execute(m.stream, args);
  m.stream.wait();
}

void OnednnConv::backward_data(const ConvShape& s, const float* dy, const float* w, float* dx) {
  Impl& m = *impl_;
  Plan& p = m.plan(Pass::backward_data, s, false, false);
  p.prim.execute(m.stream, {{DNNL_ARG_DIFF_DST, m.wrap(p.dst, dy)},
                            {DNNL_ARG_WEIGHTS, m.weights_in(p, w)},
                            {DNNL_ARG_DIFF_SRC, m.wrap(p.src, dx)}});
  m.stream.wait();
}

void OnednnConv::backward_filter(const ConvShape& s, const float* x, const float* dy, float* dw,
                                 float* db) {
  Impl& m = *impl_;
  Plan& p = m.plan(Pass::backward_filter, s, db != nullptr, false);
  memory ours = m.wrap(p.ours, dw);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, m.wrap(p.src, x)},
                                       {DNNL_ARG_DIFF_DST, m.wrap(p.dst, dy)},
                                       {DNNL_ARG_DIFF_WEIGHTS, p.theirs ? p.theirs : ours}};
  if (db) args.emplace(DNNL_ARG_DIFF_BIAS, m.wrap(p.bias, db));
  p.prim.execute(m.stream, args);
  if (p.theirs) p.convert.execute(m.stream, p.theirs, ours);
  m.stream.wait();
}

std::string onednn_version() {
  const dnnl_version_t* v = dnnl::version();
  std::ostringstream os;
  os << v->major << '.' << v->minor << '.' << v->patch;
  return os.str();
}

}  // namespace dq::cpu
