// The U-Net on the CPU backend against PyTorch (tests/reference/unet_small.h5,
// written by make_unet_reference.py in float64): output, loss, every
// parameter gradient and one Adam step. Dropout is 0 here; the dropout op is
// tested on its own. Errors are max |ours - ref| / max |ref| per tensor.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "core/io/h5io.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/unet.h"

using namespace dq;

namespace {

const std::string kReference = std::string(DEEPQSM_SOURCE_DIR) + "/tests/reference/unet_small.h5";
constexpr double kTol = 1e-4;

double max_abs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v) m = std::max(m, std::fabs(static_cast<double>(x)));
  return m;
}

// max |got - want| / max |want| over the elements where keep(i) holds.
template <typename Keep>
double rel_err(const float* got, const std::vector<float>& want, Keep keep) {
  double scale = max_abs(want), worst = 0;
  for (size_t i = 0; i < want.size(); ++i)
    if (keep(i)) worst = std::max(worst, std::fabs(static_cast<double>(got[i]) - want[i]));
  return scale > 0 ? worst / scale : worst;
}
double rel_err(const float* got, const std::vector<float>& want) {
  return rel_err(got, want, [](size_t) { return true; });
}

// The worst error of one kind across tensors, for the summary line.
struct Worst {
  double err = 0;
  std::string name;
  void add(const std::string& n, double e) {
    if (e >= err) err = e, name = n;
  }
};

Tensor host_from(const std::vector<float>& v, const Shape& shape) {
  Tensor t = Tensor::zeros(shape);
  std::copy(v.begin(), v.end(), t.f32());
  return t;
}

// Reads "<prefix><group>/<name>" for every parameter into a flat host buffer.
Tensor read_flat(const H5File& f, const ParamLayout& layout, const std::string& group) {
  Tensor flat = Tensor::zeros(Shape{layout.total()});
  for (int i = 0; i < static_cast<int>(layout.params().size()); ++i) {
    std::vector<int64_t> dims;
    std::vector<float> v = f.read_floats(group + "/" + layout[i].name, &dims);
    INFO(group << "/" << layout[i].name);
    REQUIRE(Shape(dims) == layout[i].shape);
    Tensor view = layout.view(flat, i);
    std::copy(v.begin(), v.end(), view.f32());
  }
  return flat;
}

// One case of the file: its attributes on `obj`, its data under `prefix`.
void check_case(const H5File& f, const std::string& obj, const std::string& prefix) {
  UNetConfig cfg;
  cfg.depth = static_cast<int>(f.attr_int(obj, "depth"));
  cfg.base_filters = static_cast<int>(f.attr_int(obj, "base_filters"));
  cfg.head_kernel = static_cast<int>(f.attr_int(obj, "head_kernel"));
  cfg.residual = f.attr_int(obj, "residual") != 0;
  cfg.dropout = 0.0f;
  UNet net(cfg);
  const ParamLayout& layout = net.layout();
  const int nparams = static_cast<int>(layout.params().size());

  std::vector<int64_t> xdims;
  std::vector<float> x = f.read_floats("x", &xdims), target = f.read_floats("target");
  std::vector<float> y_ref = f.read_floats(prefix + "y");
  const double loss_ref = f.read_floats(prefix + "loss").at(0);
  const Shape xs(xdims);
  REQUIRE(target.size() == x.size());
  REQUIRE(y_ref.size() == x.size());

  auto be = make_cpu_backend();
  Tensor params = be->alloc(Shape{layout.total()}), grads = be->alloc(Shape{layout.total()});
  be->upload(read_flat(f, layout, prefix + "params"), params);
  Tensor xt = be->alloc(xs), tt = be->alloc(xs), y = be->alloc(xs), dy = be->alloc(xs);
  be->upload(host_from(x, xs), xt);
  be->upload(host_from(target, xs), tt);

  net.forward(*be, params, xt, y, /*train=*/true);
  const double loss = be->mse_loss(y, tt, &dy);
  net.backward(*be, params, dy, grads);

  Tensor y_host = Tensor::zeros(xs), g_host = Tensor::zeros(Shape{layout.total()});
  be->download(y, y_host);
  be->download(grads, g_host);
  const double y_err = rel_err(y_host.f32(), y_ref);
  const double loss_err = std::fabs(loss - loss_ref) / std::fabs(loss_ref);
  CHECK(y_err < kTol);
  CHECK(loss_err < kTol);

  // Gradients, and one Adam step from them (end to end).
  Tensor p_after = be->alloc(params.shape()), m = be->alloc(params.shape()),
         v = be->alloc(params.shape());
  be->copy(params, p_after);
  be->adam_step(p_after, grads, m, v, AdamConfig{}, 1);
  Tensor pa_host = Tensor::zeros(params.shape());
  be->download(p_after, pa_host);

  // The same Adam step from PyTorch's own gradients tests the update formula
  // alone, on every element.
  Tensor p_exact = be->alloc(params.shape()), g_ref = be->alloc(params.shape());
  be->copy(params, p_exact);
  be->upload(read_flat(f, layout, prefix + "grads"), g_ref);
  be->fill(m, 0.0f);
  be->fill(v, 0.0f);
  be->adam_step(p_exact, g_ref, m, v, AdamConfig{}, 1);
  Tensor pe_host = Tensor::zeros(params.shape());
  be->download(p_exact, pe_host);

  Worst grad_worst, adam_worst, exact_worst;
  int64_t skipped = 0;
  for (int i = 0; i < nparams; ++i) {
    const std::string& name = layout[i].name;
    INFO(prefix << name);
    std::vector<float> g_want = f.read_floats(prefix + "grads/" + name);
    std::vector<float> p_want = f.read_floats(prefix + "params_after_adam/" + name);
    const int64_t off = layout[i].offset;

    double ge = rel_err(g_host.f32() + off, g_want);
    CHECK(ge < kTol);
    grad_worst.add(name, ge);

    // Adam's first step is lr * g / (|g| + eps), about lr * sign(g): where the
    // reference gradient is nonzero but within our gradient tolerance of zero
    // its sign, and so the step, is not determined by a float32 computation.
    // (Exact zeros, from ReLUs dead over the whole batch, must stay put.)
    const double g_floor = kTol * max_abs(g_want);
    auto determined = [&](size_t j) { return g_want[j] == 0 || std::fabs(g_want[j]) >= g_floor; };
    for (size_t j = 0; j < g_want.size(); ++j) skipped += !determined(j);
    double ae = rel_err(pa_host.f32() + off, p_want, determined);
    CHECK(ae < kTol);
    adam_worst.add(name, ae);

    double ee = rel_err(pe_host.f32() + off, p_want);
    CHECK(ee < kTol);
    exact_worst.add(name, ee);
  }
  std::printf(
      "reference %s: y %.2e, loss %.2e, worst grad %.2e (%s), Adam from our grads %.2e (%s; "
      "%lld of %lld elements with 0 < |g| < 1e-4 max|g| skipped), Adam from PyTorch grads %.2e "
      "(%s)\n",
      obj.c_str(), y_err, loss_err, grad_worst.err, grad_worst.name.c_str(), adam_worst.err,
      adam_worst.name.c_str(), static_cast<long long>(skipped),
      static_cast<long long>(layout.count()), exact_worst.err, exact_worst.name.c_str());
}

}  // namespace

TEST_CASE("reference: U-Net forward, gradients and Adam match PyTorch (residual, 1x1x1 head)",
          "[reference]") {
  H5File f(kReference, H5File::Mode::read);
  check_case(f, "/", "");
}

TEST_CASE("reference: U-Net forward, gradients and Adam match PyTorch (plain, 3x3x3 head)",
          "[reference]") {
  H5File f(kReference, H5File::Mode::read);
  check_case(f, "plain", "plain/");
}
