#include "core/nn/op_checks.h"

#include <algorithm>
#include <vector>

#include "core/error.h"

namespace dq {

void check_f32(const Tensor& t, Device dev, const char* op, const char* what) {
  DQ_CHECK(t.dtype() == DType::f32 && t.device() == dev, op, ": ", what, " must be an fp32 ",
           device_name(dev), " tensor, got ", dtype_name(t.dtype()), " on ",
           device_name(t.device()));
  DQ_CHECK(t.defined(), op, ": ", what, " ", t.shape().str(), " has no storage");
}

void check_shape(const Tensor& t, const Shape& want, const char* op, const char* what) {
  DQ_CHECK(t.shape() == want, op, ": ", what, " has shape ", t.shape().str(), ", expected ",
           want.str());
}

void check_same(const Tensor& a, const Tensor& b, Device dev, const char* op, const char* what_a,
                const char* what_b) {
  check_f32(a, dev, op, what_a);
  check_f32(b, dev, op, what_b);
  DQ_CHECK(a.shape() == b.shape(), op, ": ", what_a, " ", a.shape().str(), " and ", what_b, " ",
           b.shape().str(), " differ in shape");
}

void check_activation(const Tensor& t, Device dev, const char* op, const char* what) {
  check_f32(t, dev, op, what);
  DQ_CHECK(t.shape().rank() == 5, op, ": ", what, " must be (N, D, H, W, C), got ",
           t.shape().str());
}

void check_bias(const Tensor* b, int64_t co, Device dev, const char* op, const char* what) {
  if (!b) return;
  check_f32(*b, dev, op, what);
  check_shape(*b, Shape{co}, op, what);
}

int64_t check_concat(const Tensor& a, const Tensor& b, const Tensor& out, Device dev,
                     const char* op) {
  check_f32(a, dev, op, "a");
  check_f32(b, dev, op, "b");
  check_f32(out, dev, op, "out");
  const int r = a.shape().rank();
  DQ_CHECK(r >= 1 && b.shape().rank() == r, op, ": a ", a.shape().str(), " and b ", b.shape().str(),
           " must have the same rank");
  std::vector<int64_t> lead(a.shape().dims.begin(), a.shape().dims.end() - 1);
  DQ_CHECK(std::equal(lead.begin(), lead.end(), b.shape().dims.begin()), op, ": a ",
           a.shape().str(), " and b ", b.shape().str(), " differ outside the channel axis");
  std::vector<int64_t> want = lead;
  want.push_back(a.shape()[r - 1] + b.shape()[r - 1]);
  check_shape(out, Shape(want), op, "out");
  int64_t rows = 1;
  for (int64_t d : lead) rows *= d;
  return rows;
}

void check_adam(const Tensor& params, const Tensor& grads, const Tensor& m, const Tensor& v,
                int64_t step, Device dev) {
  const char* op = "adam_step";
  check_same(params, grads, dev, op, "params", "grads");
  check_same(params, m, dev, op, "params", "m");
  check_same(params, v, dev, op, "params", "v");
  DQ_CHECK(step >= 1, op, ": step must be >= 1, got ", step);
}

ConvGeometry conv_geometry(const Tensor& x, const Tensor& w, Device dev, const char* op,
                           const char* what_x, const char* what_w) {
  check_activation(x, dev, op, what_x);
  check_f32(w, dev, op, what_w);
  const Shape& ws = w.shape();
  DQ_CHECK(ws.rank() == 5 && (ws[1] == 1 || ws[1] == 3) && ws[2] == ws[1] && ws[3] == ws[1], op,
           ": ", what_w, " must be (Co, k, k, k, Ci) with k 1 or 3, got ", ws.str());
  DQ_CHECK(ws[4] == x.dim(4), op, ": ", what_w, " ", ws.str(), " expects ", ws[4],
           " input channels but ", what_x, " ", x.shape().str(), " has ", x.dim(4));
  return {false, x.dim(0), x.dim(1), x.dim(2), x.dim(3), x.dim(4), ws[0], ws[1]};
}

ConvGeometry deconv_geometry(const Tensor& x, const Tensor& w, Device dev, const char* op,
                             const char* what_x, const char* what_w) {
  check_activation(x, dev, op, what_x);
  check_f32(w, dev, op, what_w);
  const Shape& ws = w.shape();
  DQ_CHECK(ws.rank() == 5 && ws[1] == 2 && ws[2] == 2 && ws[3] == 2, op, ": ", what_w,
           " must be (Ci, 2, 2, 2, Co), got ", ws.str());
  DQ_CHECK(ws[0] == x.dim(4), op, ": ", what_w, " ", ws.str(), " expects ", ws[0],
           " input channels but ", what_x, " ", x.shape().str(), " has ", x.dim(4));
  return {true, x.dim(0), x.dim(1), x.dim(2), x.dim(3), x.dim(4), ws[4], 2};
}

Shape output_shape(const ConvGeometry& g) {
  int64_t f = g.transposed ? 2 : 1;
  return Shape{g.n, f * g.d, f * g.h, f * g.w, g.co};
}

}  // namespace dq
