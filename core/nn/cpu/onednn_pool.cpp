#include "core/nn/cpu/onednn_pool.h"

#include <dnnl.hpp>
#include <string>
#include <unordered_map>

#include "core/error.h"

namespace dq::cpu {

namespace {

using dnnl::algorithm;
using dnnl::memory;
using dnnl::prop_kind;

struct Plan {
  memory::desc src, dst;
  dnnl::pooling_forward infer;  // no workspace
  dnnl::pooling_forward train;  // writes the argmax workspace
  dnnl::pooling_backward backward;
  memory workspace;
};

}  // namespace

struct OnednnPool::Impl {
  dnnl::engine engine{dnnl::engine::kind::cpu, 0};
  dnnl::stream stream{engine};
  std::unordered_map<std::string, Plan> plans;

  Plan& plan(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c) {
    const std::string key = std::to_string(n) + "," + std::to_string(d) + "," + std::to_string(h) +
                            "," + std::to_string(w) + "," + std::to_string(c);
    auto it = plans.find(key);
    if (it != plans.end()) return it->second;
    try {
      Plan p;
      // oneDNN's logical order is (N, C, D, H, W); NDHWC enters through the tag.
      p.src = memory::desc({n, c, d, h, w}, memory::data_type::f32, memory::format_tag::ndhwc);
      p.dst = memory::desc({n, c, d / 2, h / 2, w / 2}, memory::data_type::f32,
                           memory::format_tag::ndhwc);
      const memory::dims two{2, 2, 2}, zero{0, 0, 0};
      dnnl::pooling_forward::desc inf(prop_kind::forward_inference, algorithm::pooling_max, p.src,
                                      p.dst, two, two, zero, zero);
      p.infer = dnnl::pooling_forward(dnnl::pooling_forward::primitive_desc(inf, engine));
      dnnl::pooling_forward::desc trn(prop_kind::forward_training, algorithm::pooling_max, p.src,
                                      p.dst, two, two, zero, zero);
      dnnl::pooling_forward::primitive_desc train_pd(trn, engine);
      p.train = dnnl::pooling_forward(train_pd);
      p.workspace = memory(train_pd.workspace_desc(), engine);
      dnnl::pooling_backward::desc bwd(algorithm::pooling_max, p.src, p.dst, two, two, zero, zero);
      p.backward =
          dnnl::pooling_backward(dnnl::pooling_backward::primitive_desc(bwd, engine, train_pd));
      return plans.emplace(key, std::move(p)).first->second;
    } catch (const dnnl::error& e) {
      fail("oneDNN could not build a max-pooling for input (", n, ", ", d, ", ", h, ", ", w, ", ",
           c, "): ", e.what());
    }
  }

  memory wrap(const memory::desc& md, const float* p) {
    // oneDNN takes non-const handles; these buffers are only read.
    return memory(md, engine, const_cast<float*>(p));
  }
};

OnednnPool::OnednnPool() : impl_(std::make_unique<Impl>()) {}
OnednnPool::~OnednnPool() = default;

void OnednnPool::forward(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c, const float* x,
                         float* y) {
  Impl& m = *impl_;
  Plan& p = m.plan(n, d, h, w, c);
  p.infer.execute(m.stream, {{DNNL_ARG_SRC, m.wrap(p.src, x)}, {DNNL_ARG_DST, m.wrap(p.dst, y)}});
  m.stream.wait();
}

void OnednnPool::backward(int64_t n, int64_t d, int64_t h, int64_t w, int64_t c, const float* x,
                          const float* dy, float* dx) {
  Impl& m = *impl_;
  Plan& p = m.plan(n, d, h, w, c);
  // The pooled values themselves are not needed again; only the workspace.
  memory scratch_y(p.dst, m.engine);
  p.train.execute(m.stream, {{DNNL_ARG_SRC, m.wrap(p.src, x)},
                             {DNNL_ARG_DST, scratch_y},
                             {DNNL_ARG_WORKSPACE, p.workspace}});
  p.backward.execute(m.stream, {{DNNL_ARG_DIFF_DST, m.wrap(p.dst, dy)},
                                {DNNL_ARG_WORKSPACE, p.workspace},
                                {DNNL_ARG_DIFF_SRC, m.wrap(p.src, dx)}});
  m.stream.wait();
}

}  // namespace dq::cpu
