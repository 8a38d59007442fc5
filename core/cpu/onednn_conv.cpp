#include "core/cpu/onednn_conv.h"

#include <dnnl.hpp>
#include <sstream>
#include <unordered_map>

#include "core/error.h"

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

struct OnednnConv::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::unordered_map<std::string, Plan> plans;

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
