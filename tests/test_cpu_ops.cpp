// Every CPU backend op against a naive loop written here straight from the
// conventions in core/nn/backend.h, on random data; plus dot-product tests that
// tie each backward pass to its forward (<f(x), y> == <x, f^T(y)>).
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>
#include <vector>

#include "core/error.h"
#include "core/nn/backend.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/philox.h"

using namespace dq;

namespace {

constexpr double kTol = 1e-5;

Tensor random_tensor(const Shape& s, std::mt19937& rng) {
  Tensor t = Tensor::zeros(s);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  float* p = t.f32();
  for (int64_t i = 0; i < t.numel(); ++i) p[i] = u(rng);
  return t;
}

// max |got - want| / max |want|: the error relative to the output's scale.
double rel_err(const Tensor& got, const std::vector<double>& want) {
  REQUIRE(got.numel() == static_cast<int64_t>(want.size()));
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < want.size(); ++i) {
    num = std::max(num, std::abs(static_cast<double>(got.f32()[i]) - want[i]));
    den = std::max(den, std::abs(want[i]));
  }
  return num / std::max(den, 1e-30);
}

double dot(const Tensor& a, const Tensor& b) {
  REQUIRE(a.numel() == b.numel());
  double s = 0.0;
  for (int64_t i = 0; i < a.numel(); ++i) s += static_cast<double>(a.f32()[i]) * b.f32()[i];
  return s;
}

// Offsets into a row-major (N, D, H, W, C) or (O, k, k, k, I) array.
struct Index5 {
  int64_t d1, d2, d3, d4;
  explicit Index5(const Shape& s) : d1(s[1]), d2(s[2]), d3(s[3]), d4(s[4]) {}
  int64_t operator()(int64_t a, int64_t b, int64_t c, int64_t d, int64_t e) const {
    return (((a * d1 + b) * d2 + c) * d3 + d) * d4 + e;
  }
};

bool inside(int64_t i, int64_t n) {
  return i >= 0 && i < n;
}

// ------------------------------------------------------------ references
// y[n,d,h,w,o] = b[o] + sum x[n, d+a-r, h+b-r, w+c-r, i] * w[o,a,b,c,i], r = k/2.
std::vector<double> conv_ref(const Tensor& x, const Tensor& w, const Tensor* b, bool relu) {
  const Shape& s = x.shape();
  int64_t co = w.dim(0), k = w.dim(1), r = k / 2;
  Shape ys{s[0], s[1], s[2], s[3], co};
  Index5 X(s), W(w.shape()), Y(ys);
  std::vector<double> y(static_cast<size_t>(ys.numel()));
  for (int64_t n = 0; n < s[0]; ++n)
    for (int64_t d = 0; d < s[1]; ++d)
      for (int64_t h = 0; h < s[2]; ++h)
        for (int64_t v = 0; v < s[3]; ++v)
          for (int64_t o = 0; o < co; ++o) {
            double acc = b ? b->f32()[o] : 0.0;
            for (int64_t a = 0; a < k; ++a)
              for (int64_t bb = 0; bb < k; ++bb)
                for (int64_t c = 0; c < k; ++c) {
                  int64_t zd = d + a - r, zh = h + bb - r, zw = v + c - r;
                  if (!inside(zd, s[1]) || !inside(zh, s[2]) || !inside(zw, s[3])) continue;
                  for (int64_t i = 0; i < s[4]; ++i)
                    acc += static_cast<double>(x.f32()[X(n, zd, zh, zw, i)]) *
                           w.f32()[W(o, a, bb, c, i)];
                }
            y[static_cast<size_t>(Y(n, d, h, v, o))] = relu ? std::max(acc, 0.0) : acc;
          }
  return y;
}

// Visits every (input voxel, output voxel, tap) triple of a 'same'
// convolution with kernel k: f(x offset without channel, y offset without
// channel, a, b, c).
template <class F>
void conv_taps(const Shape& xs, int64_t k, const F& f) {
  int64_t r = k / 2;
  for (int64_t n = 0; n < xs[0]; ++n)
    for (int64_t d = 0; d < xs[1]; ++d)
      for (int64_t h = 0; h < xs[2]; ++h)
        for (int64_t v = 0; v < xs[3]; ++v)
          for (int64_t a = 0; a < k; ++a)
            for (int64_t b = 0; b < k; ++b)
              for (int64_t c = 0; c < k; ++c) {
                int64_t zd = d + a - r, zh = h + b - r, zw = v + c - r;
                if (!inside(zd, xs[1]) || !inside(zh, xs[2]) || !inside(zw, xs[3])) continue;
                int64_t xo = ((n * xs[1] + zd) * xs[2] + zh) * xs[3] + zw;
                int64_t yo = ((n * xs[1] + d) * xs[2] + h) * xs[3] + v;
                f(xo, yo, a, b, c);
              }
}

// dx = conv^T(dy): the scatter form of conv_ref.
std::vector<double> conv_bwd_data_ref(const Tensor& dy, const Tensor& w, const Shape& xs) {
  int64_t co = w.dim(0), k = w.dim(1), ci = xs[4];
  Index5 W(w.shape());
  std::vector<double> dx(static_cast<size_t>(xs.numel()), 0.0);
  conv_taps(xs, k, [&](int64_t xo, int64_t yo, int64_t a, int64_t b, int64_t c) {
    for (int64_t o = 0; o < co; ++o)
      for (int64_t i = 0; i < ci; ++i)
        dx[static_cast<size_t>(xo * ci + i)] +=
            static_cast<double>(dy.f32()[yo * co + o]) * w.f32()[W(o, a, b, c, i)];
  });
  return dx;
}

// dw[o,a,b,c,i] = sum x[.., i] * dy[.., o] over the taps; db[o] = sum dy[.., o].
void conv_bwd_filter_ref(const Tensor& x, const Tensor& dy, int64_t k, std::vector<double>& dw,
                         std::vector<double>& db) {
  int64_t ci = x.dim(4), co = dy.dim(4);
  Shape ws{co, k, k, k, ci};
  Index5 W(ws);
  dw.assign(static_cast<size_t>(ws.numel()), 0.0);
  db.assign(static_cast<size_t>(co), 0.0);
  conv_taps(x.shape(), k, [&](int64_t xo, int64_t yo, int64_t a, int64_t b, int64_t c) {
    for (int64_t o = 0; o < co; ++o)
      for (int64_t i = 0; i < ci; ++i)
        dw[static_cast<size_t>(W(o, a, b, c, i))] +=
            static_cast<double>(x.f32()[xo * ci + i]) * dy.f32()[yo * co + o];
  });
  for (int64_t j = 0; j < dy.numel(); ++j) db[static_cast<size_t>(j % co)] += dy.f32()[j];
}

// Visits every (input voxel, output voxel, tap) triple of the transposed
// convolution: output (2d+a, 2h+b, 2w+c) reads input (d, h, w).
template <class F>
void deconv_taps(const Shape& xs, const F& f) {
  for (int64_t n = 0; n < xs[0]; ++n)
    for (int64_t d = 0; d < xs[1]; ++d)
      for (int64_t h = 0; h < xs[2]; ++h)
        for (int64_t v = 0; v < xs[3]; ++v)
          for (int64_t a = 0; a < 2; ++a)
            for (int64_t b = 0; b < 2; ++b)
              for (int64_t c = 0; c < 2; ++c) {
                int64_t xo = ((n * xs[1] + d) * xs[2] + h) * xs[3] + v;
                int64_t yo =
                    ((n * 2 * xs[1] + 2 * d + a) * 2 * xs[2] + 2 * h + b) * 2 * xs[3] + 2 * v + c;
                f(xo, yo, a, b, c);
              }
}

// y[n, 2d+a, 2h+b, 2w+c, o] = b[o] + sum_i x[n,d,h,w,i] * w[i,a,b,c,o].
std::vector<double> deconv_ref(const Tensor& x, const Tensor& w, const Tensor* b, bool relu) {
  const Shape& s = x.shape();
  int64_t ci = s[4], co = w.dim(4);
  Index5 W(w.shape());
  std::vector<double> y(static_cast<size_t>(s[0] * 8 * s[1] * s[2] * s[3] * co));
  deconv_taps(s, [&](int64_t xo, int64_t yo, int64_t a, int64_t bb, int64_t c) {
    for (int64_t o = 0; o < co; ++o) {
      double acc = b ? b->f32()[o] : 0.0;
      for (int64_t i = 0; i < ci; ++i)
        acc += static_cast<double>(x.f32()[xo * ci + i]) * w.f32()[W(i, a, bb, c, o)];
      y[static_cast<size_t>(yo * co + o)] = relu ? std::max(acc, 0.0) : acc;
    }
  });
  return y;
}

std::vector<double> deconv_bwd_data_ref(const Tensor& dy, const Tensor& w, const Shape& xs) {
  int64_t ci = xs[4], co = w.dim(4);
  Index5 W(w.shape());
  std::vector<double> dx(static_cast<size_t>(xs.numel()), 0.0);
  deconv_taps(xs, [&](int64_t xo, int64_t yo, int64_t a, int64_t b, int64_t c) {
    for (int64_t i = 0; i < ci; ++i)
      for (int64_t o = 0; o < co; ++o)
        dx[static_cast<size_t>(xo * ci + i)] +=
            static_cast<double>(dy.f32()[yo * co + o]) * w.f32()[W(i, a, b, c, o)];
  });
  return dx;
}

void deconv_bwd_filter_ref(const Tensor& x, const Tensor& dy, std::vector<double>& dw,
                           std::vector<double>& db) {
  int64_t ci = x.dim(4), co = dy.dim(4);
  Shape ws{ci, 2, 2, 2, co};
  Index5 W(ws);
  dw.assign(static_cast<size_t>(ws.numel()), 0.0);
  db.assign(static_cast<size_t>(co), 0.0);
  deconv_taps(x.shape(), [&](int64_t xo, int64_t yo, int64_t a, int64_t b, int64_t c) {
    for (int64_t i = 0; i < ci; ++i)
      for (int64_t o = 0; o < co; ++o)
        dw[static_cast<size_t>(W(i, a, b, c, o))] +=
            static_cast<double>(x.f32()[xo * ci + i]) * dy.f32()[yo * co + o];
  });
  for (int64_t j = 0; j < dy.numel(); ++j) db[static_cast<size_t>(j % co)] += dy.f32()[j];
}

// Max-pool 2x2x2: y and, for the backward pass, dx with each dy routed to
// the first maximum of its window in order (a, b, c).
void maxpool_ref(const Tensor& x, const Tensor& dy, std::vector<double>& y,
                 std::vector<double>& dx) {
  const Shape& s = x.shape();
  Shape ys{s[0], s[1] / 2, s[2] / 2, s[3] / 2, s[4]};
  Index5 X(s), Y(ys);
  y.assign(static_cast<size_t>(ys.numel()), 0.0);
  dx.assign(static_cast<size_t>(s.numel()), 0.0);
  for (int64_t n = 0; n < ys[0]; ++n)
    for (int64_t d = 0; d < ys[1]; ++d)
      for (int64_t h = 0; h < ys[2]; ++h)
        for (int64_t v = 0; v < ys[3]; ++v)
          for (int64_t c = 0; c < ys[4]; ++c) {
            int64_t best = -1;
            for (int64_t a = 0; a < 2; ++a)
              for (int64_t b = 0; b < 2; ++b)
                for (int64_t e = 0; e < 2; ++e) {
                  int64_t i = X(n, 2 * d + a, 2 * h + b, 2 * v + e, c);
                  if (best < 0 || x.f32()[i] > x.f32()[best]) best = i;
                }
            int64_t o = Y(n, d, h, v, c);
            y[static_cast<size_t>(o)] = x.f32()[best];
            dx[static_cast<size_t>(best)] = dy.f32()[o];
          }
}

struct ConvCase {
  int64_t n, d, h, w, ci, co, k;
  bool bias, relu;
};

// Odd sizes, one input channel (the U-Net's first layer), and channel counts
// that are multiples of 16 so oneDNN's blocked kernels are exercised too.
const ConvCase kConvCases[] = {
    {2, 4, 5, 6, 3, 5, 3, true, false},   {2, 4, 5, 6, 3, 5, 3, false, true},
    {2, 4, 5, 6, 3, 5, 3, true, true},    {2, 4, 5, 6, 3, 5, 1, true, false},
    {2, 4, 5, 6, 3, 5, 1, false, true},   {1, 3, 5, 7, 1, 4, 3, true, true},
    {1, 6, 5, 7, 32, 16, 3, true, false}, {1, 5, 3, 4, 16, 1, 1, false, false},
};

const ConvCase kDeconvCases[] = {
    {2, 3, 4, 5, 3, 5, 2, true, false},   {2, 3, 4, 5, 3, 5, 2, false, true},
    {1, 2, 3, 2, 16, 8, 2, true, true},   {1, 3, 3, 3, 1, 2, 2, false, false},
    {1, 2, 2, 3, 32, 16, 2, true, false},
    // Large enough that the forward pass runs in several slabs of input
    // slices (core/nn/cpu/onednn_conv.cpp): three slices each, then one each.
    {3, 7, 24, 24, 4, 64, 2, true, true},  {1, 3, 64, 64, 2, 40, 2, false, true},
};

}  // namespace

TEST_CASE("cpu conv3d forward matches the naive loop", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(1);
  for (const ConvCase& c : kConvCases) {
    INFO("N " << c.n << " D " << c.d << " H " << c.h << " W " << c.w << " Ci " << c.ci << " Co "
              << c.co << " k " << c.k << " bias " << c.bias << " relu " << c.relu);
    Tensor x = random_tensor({c.n, c.d, c.h, c.w, c.ci}, rng);  // (N, D, H, W, Ci)
    Tensor w = random_tensor({c.co, c.k, c.k, c.k, c.ci}, rng);
    Tensor b = random_tensor({c.co}, rng);
    Tensor y = be->alloc({c.n, c.d, c.h, c.w, c.co});
    be->conv3d_forward(x, w, c.bias ? &b : nullptr, y, c.relu);
    CHECK(rel_err(y, conv_ref(x, w, c.bias ? &b : nullptr, c.relu)) < kTol);
  }
}

TEST_CASE("cpu conv3d backward data, filter and bias match the naive loops", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(2);
  for (const ConvCase& c : kConvCases) {
    INFO("N " << c.n << " D " << c.d << " H " << c.h << " W " << c.w << " Ci " << c.ci << " Co "
              << c.co << " k " << c.k << " bias " << c.bias);
    Shape xs{c.n, c.d, c.h, c.w, c.ci};
    Tensor x = random_tensor(xs, rng);
    Tensor w = random_tensor({c.co, c.k, c.k, c.k, c.ci}, rng);
    Tensor dy = random_tensor({c.n, c.d, c.h, c.w, c.co}, rng);

    Tensor dx = random_tensor(xs, rng);  // garbage in outputs: they must be overwritten
    be->conv3d_backward_data(dy, w, dx);
    CHECK(rel_err(dx, conv_bwd_data_ref(dy, w, xs)) < kTol);

    Tensor dw = random_tensor(w.shape(), rng);
    Tensor db = random_tensor({c.co}, rng);
    be->conv3d_backward_filter(x, dy, dw, c.bias ? &db : nullptr);
    std::vector<double> dw_ref, db_ref;
    conv_bwd_filter_ref(x, dy, c.k, dw_ref, db_ref);
    CHECK(rel_err(dw, dw_ref) < kTol);
    if (c.bias) CHECK(rel_err(db, db_ref) < kTol);
  }
}

TEST_CASE("cpu deconv3d forward and backward match the naive loops", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(3);
  for (const ConvCase& c : kDeconvCases) {
    INFO("N " << c.n << " D " << c.d << " H " << c.h << " W " << c.w << " Ci " << c.ci << " Co "
              << c.co << " bias " << c.bias << " relu " << c.relu);
    Shape xs{c.n, c.d, c.h, c.w, c.ci};
    Shape ys{c.n, 2 * c.d, 2 * c.h, 2 * c.w, c.co};
    Tensor x = random_tensor(xs, rng);
    Tensor w = random_tensor({c.ci, 2, 2, 2, c.co}, rng);  // (Ci, 2, 2, 2, Co)
    Tensor b = random_tensor({c.co}, rng);
    Tensor y = random_tensor(ys, rng);
    be->deconv3d_forward(x, w, c.bias ? &b : nullptr, y, c.relu);
    CHECK(rel_err(y, deconv_ref(x, w, c.bias ? &b : nullptr, c.relu)) < kTol);

    Tensor dy = random_tensor(ys, rng);
    Tensor dx = random_tensor(xs, rng);
    be->deconv3d_backward_data(dy, w, dx);
    CHECK(rel_err(dx, deconv_bwd_data_ref(dy, w, xs)) < kTol);

    Tensor dw = random_tensor(w.shape(), rng);
    Tensor db = random_tensor({c.co}, rng);
    be->deconv3d_backward_filter(x, dy, dw, c.bias ? &db : nullptr);
    std::vector<double> dw_ref, db_ref;
    deconv_bwd_filter_ref(x, dy, dw_ref, db_ref);
    CHECK(rel_err(dw, dw_ref) < kTol);
    if (c.bias) CHECK(rel_err(db, db_ref) < kTol);
  }
}

TEST_CASE("cpu convolution backward passes are the adjoints of the forward", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(4);
  auto close = [](double a, double b) {
    return std::abs(a - b) <= 1e-5 * std::max({std::abs(a), std::abs(b), 1.0});
  };
  for (int64_t k : {1, 3}) {
    INFO("conv k " << k);
    Shape xs{2, 3, 4, 5, 6}, ys{2, 3, 4, 5, 7};
    Tensor x = random_tensor(xs, rng), dy = random_tensor(ys, rng);
    Tensor w = random_tensor({7, k, k, k, 6}, rng);
    Tensor y = be->alloc(ys), dx = be->alloc(xs), dw = be->alloc(w.shape());
    be->conv3d_forward(x, w, nullptr, y, false);
    be->conv3d_backward_data(dy, w, dx);
    be->conv3d_backward_filter(x, dy, dw, nullptr);
    CHECK(close(dot(y, dy), dot(x, dx)));  // <conv(x; w), dy> = <x, conv^T(dy; w)>
    CHECK(close(dot(y, dy), dot(w, dw)));  // ... = <w, dW(x, dy)>
  }
  {
    INFO("deconv");
    Shape xs{2, 3, 2, 4, 6}, ys{2, 6, 4, 8, 5};
    Tensor x = random_tensor(xs, rng), dy = random_tensor(ys, rng);
    Tensor w = random_tensor({6, 2, 2, 2, 5}, rng);
    Tensor y = be->alloc(ys), dx = be->alloc(xs), dw = be->alloc(w.shape());
    be->deconv3d_forward(x, w, nullptr, y, false);
    be->deconv3d_backward_data(dy, w, dx);
    be->deconv3d_backward_filter(x, dy, dw, nullptr);
    CHECK(close(dot(y, dy), dot(x, dx)));
    CHECK(close(dot(y, dy), dot(w, dw)));
  }
}

TEST_CASE("cpu convolution plans are cached per shape and reused exactly", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(5);
  Tensor x = random_tensor({1, 4, 4, 4, 8}, rng), w = random_tensor({8, 3, 3, 3, 8}, rng);
  Tensor x2 = random_tensor({2, 2, 6, 4, 8}, rng);
  Tensor y1 = be->alloc({1, 4, 4, 4, 8}), y2 = be->alloc({1, 4, 4, 4, 8});
  Tensor other = be->alloc({2, 2, 6, 4, 8});
  be->conv3d_forward(x, w, nullptr, y1, true);
  be->conv3d_forward(x2, w, nullptr, other, true);
  be->conv3d_forward(x, w, nullptr, y2, true);
  for (int64_t i = 0; i < y1.numel(); ++i) REQUIRE(y1.f32()[i] == y2.f32()[i]);
  CHECK(rel_err(other, conv_ref(x2, w, nullptr, true)) < kTol);
}

TEST_CASE("cpu maxpool forward and backward, ties to the first maximum", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(6);
  SECTION("random") {
    Tensor x = random_tensor({2, 4, 6, 2, 3}, rng);
    Tensor y = be->alloc({2, 2, 3, 1, 3}), dx = random_tensor(x.shape(), rng);
    Tensor dy = random_tensor(y.shape(), rng);
    be->maxpool_forward(x, y);
    be->maxpool_backward(x, y, dy, dx);
    std::vector<double> y_ref, dx_ref;
    maxpool_ref(x, dy, y_ref, dx_ref);
    CHECK(rel_err(y, y_ref) == 0.0);
    CHECK(rel_err(dx, dx_ref) == 0.0);
  }
  SECTION("ties") {
    // Channel 0: all eight equal -> window element 0. Channel 1: maxima at
    // window elements 3 and 6 -> element 3.
    Tensor x = be->alloc({1, 2, 2, 2, 2});
    for (int j = 0; j < 8; ++j) {
      x.f32()[j * 2 + 0] = 0.5f;
      x.f32()[j * 2 + 1] = (j == 3 || j == 6) ? 2.0f : -1.0f;
    }
    Tensor y = be->alloc({1, 1, 1, 1, 2}), dy = be->alloc({1, 1, 1, 1, 2});
    Tensor dx = be->alloc(x.shape());
    dy.f32()[0] = 3.0f;
    dy.f32()[1] = 4.0f;
    be->maxpool_forward(x, y);
    be->maxpool_backward(x, y, dy, dx);
    CHECK(y.f32()[0] == 0.5f);
    CHECK(y.f32()[1] == 2.0f);
    for (int j = 0; j < 8; ++j) {
      CHECK(dx.f32()[j * 2 + 0] == (j == 0 ? 3.0f : 0.0f));
      CHECK(dx.f32()[j * 2 + 1] == (j == 3 ? 4.0f : 0.0f));
    }
  }
}

TEST_CASE("cpu relu forward and backward, also in place", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(7);
  Tensor x = random_tensor({2, 3, 4, 5, 6}, rng), dy = random_tensor(x.shape(), rng);
  Tensor y = be->alloc(x.shape()), dx = be->alloc(x.shape());
  be->relu_forward(x, y);
  be->relu_backward(y, dy, dx);
  for (int64_t i = 0; i < x.numel(); ++i) {
    float xi = x.f32()[i];
    REQUIRE(y.f32()[i] == (xi > 0 ? xi : 0.0f));
    REQUIRE(dx.f32()[i] == (xi > 0 ? dy.f32()[i] : 0.0f));
  }
  Tensor z = be->alloc(x.shape());
  be->copy(x, z);
  be->relu_forward(z, z);
  for (int64_t i = 0; i < x.numel(); ++i) REQUIRE(z.f32()[i] == y.f32()[i]);
  Tensor g = be->alloc(x.shape());
  be->copy(dy, g);
  be->relu_backward(y, g, g);  // dx == dy
  be->relu_backward(z, g, z);  // dx == y
  for (int64_t i = 0; i < x.numel(); ++i) {
    REQUIRE(g.f32()[i] == dx.f32()[i]);
    REQUIRE(z.f32()[i] == dx.f32()[i]);
  }
}

TEST_CASE("cpu dropout keeps by the Philox draw, scales, and reuses the mask", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(8);
  const float p = 0.3f;
  const uint64_t key = key_for(42, 7);
  Tensor x = random_tensor({4, 8, 16, 16, 4}, rng);  // 32768 elements
  Tensor y = be->alloc(x.shape()), y2 = be->alloc(x.shape()), y3 = be->alloc(x.shape());
  be->dropout_forward(x, y, p, key);
  be->dropout_forward(x, y2, p, key);
  be->dropout_forward(x, y3, p, key + 1);
  const float scale = 1.0f / (1.0f - p);
  int64_t kept = 0, differ = 0;
  for (int64_t i = 0; i < x.numel(); ++i) {
    bool keep = philox_uniform(key, static_cast<uint64_t>(i)) >= p;
    kept += keep;
    REQUIRE(y.f32()[i] == (keep ? x.f32()[i] * scale : 0.0f));
    REQUIRE(y2.f32()[i] == y.f32()[i]);
    differ += (y3.f32()[i] == 0.0f) != (y.f32()[i] == 0.0f);
  }
  double frac = static_cast<double>(kept) / static_cast<double>(x.numel());
  CHECK(frac == Approx(0.7).margin(0.01));
  CHECK(differ > x.numel() / 10);  // another key draws another mask

  Tensor dy = random_tensor(x.shape(), rng), dx = be->alloc(x.shape());
  be->dropout_backward(dy, dx, p, key);
  for (int64_t i = 0; i < x.numel(); ++i)
    REQUIRE(dx.f32()[i] == (y.f32()[i] != 0.0f ? dy.f32()[i] * scale : 0.0f));

  be->dropout_forward(x, y, 0.0f, key);  // p = 0 is the identity
  for (int64_t i = 0; i < x.numel(); ++i) REQUIRE(y.f32()[i] == x.f32()[i]);
}

TEST_CASE("cpu dropout with an offset draws the masks of that slice of a larger batch",
          "[cpu_ops]") {
  // A data-parallel rank holding samples [r B, (r+1) B) of the global batch
  // passes offset r B * (elements per sample); odd offsets and sizes check
  // the groups of four that share a Philox call.
  auto be = make_cpu_backend();
  std::mt19937 rng(9);
  const float p = 0.25f;
  const uint64_t key = key_for(5, 11);
  Tensor whole = random_tensor({1, 1, 1, 1, 1001}, rng);
  Tensor y_whole = be->alloc(whole.shape());
  be->dropout_forward(whole, y_whole, p, key);
  for (int64_t offset : {0, 1, 3, 4, 517}) {
    const int64_t n = std::min<int64_t>(333, whole.numel() - offset);
    Tensor part = whole.slice(offset, Shape{1, 1, 1, 1, n});
    Tensor y = be->alloc(part.shape()), dx = be->alloc(part.shape());
    be->dropout_forward(part, y, p, key, static_cast<uint64_t>(offset));
    be->dropout_backward(part, dx, p, key, static_cast<uint64_t>(offset));
    for (int64_t i = 0; i < n; ++i) {
      REQUIRE(y.f32()[i] == y_whole.f32()[offset + i]);
      REQUIRE(dx.f32()[i] == y_whole.f32()[offset + i]);
    }
  }
}

TEST_CASE("cpu concat and split channels round-trip", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(9);
  Tensor a = random_tensor({2, 3, 4, 5, 3}, rng), b = random_tensor({2, 3, 4, 5, 5}, rng);
  Tensor out = be->alloc({2, 3, 4, 5, 8});
  be->concat_channels(a, b, out);
  for (int64_t r = 0; r < 2 * 3 * 4 * 5; ++r)
    for (int64_t c = 0; c < 8; ++c)
      REQUIRE(out.f32()[r * 8 + c] == (c < 3 ? a.f32()[r * 3 + c] : b.f32()[r * 5 + c - 3]));
  Tensor a2 = be->alloc(a.shape()), b2 = be->alloc(b.shape());
  be->split_channels(out, a2, b2);
  for (int64_t i = 0; i < a.numel(); ++i) REQUIRE(a2.f32()[i] == a.f32()[i]);
  for (int64_t i = 0; i < b.numel(); ++i) REQUIRE(b2.f32()[i] == b.f32()[i]);
}

TEST_CASE("cpu mse loss value and gradient", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(10);
  Tensor pred = random_tensor({2, 3, 4, 5, 1}, rng), target = random_tensor(pred.shape(), rng);
  Tensor dpred = be->alloc(pred.shape());
  double sum = 0.0;
  std::vector<double> g(static_cast<size_t>(pred.numel()));
  for (int64_t i = 0; i < pred.numel(); ++i) {
    double e = static_cast<double>(pred.f32()[i]) - target.f32()[i];
    sum += e * e;
    g[static_cast<size_t>(i)] = 2.0 * e / static_cast<double>(pred.numel());
  }
  float loss = be->mse_loss(pred, target, &dpred);
  CHECK(loss == Approx(sum / static_cast<double>(pred.numel())).epsilon(1e-6));
  CHECK(rel_err(dpred, g) < kTol);
  CHECK(be->mse_loss(pred, target, nullptr) == loss);
}

TEST_CASE("cpu adam matches the PyTorch formula over two steps", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(11);
  AdamConfig cfg;
  cfg.lr = 0.01f;
  Tensor p = random_tensor({1000}, rng), m = be->alloc({1000}), v = be->alloc({1000});
  std::vector<double> pr(1000), mr(1000, 0.0), vr(1000, 0.0);
  for (size_t i = 0; i < 1000; ++i) pr[i] = p.f32()[i];
  for (int64_t t = 1; t <= 2; ++t) {
    Tensor g = random_tensor({1000}, rng);
    be->adam_step(p, g, m, v, cfg, t);
    for (size_t i = 0; i < 1000; ++i) {
      double gi = g.f32()[i];
      mr[i] = cfg.beta1 * mr[i] + (1.0 - cfg.beta1) * gi;
      vr[i] = cfg.beta2 * vr[i] + (1.0 - cfg.beta2) * gi * gi;
      double mhat = mr[i] / (1.0 - std::pow(static_cast<double>(cfg.beta1), t));
      double vhat = vr[i] / (1.0 - std::pow(static_cast<double>(cfg.beta2), t));
      pr[i] -= cfg.lr * mhat / (std::sqrt(vhat) + cfg.eps);
    }
  }
  CHECK(rel_err(m, mr) < kTol);
  CHECK(rel_err(v, vr) < kTol);
  CHECK(rel_err(p, pr) < kTol);
}

TEST_CASE("cpu memory ops: alloc, fill, copy, axpy, scale, upload, download", "[cpu_ops]") {
  auto be = make_cpu_backend();
  std::mt19937 rng(12);
  CHECK(be->device() == Device::cpu);
  CHECK(be->name().find("oneDNN") != std::string::npos);
  Tensor t = be->alloc({3, 4});
  for (int64_t i = 0; i < t.numel(); ++i) REQUIRE(t.f32()[i] == 0.0f);
  be->fill(t, 2.5f);
  for (int64_t i = 0; i < t.numel(); ++i) REQUIRE(t.f32()[i] == 2.5f);
  Tensor x = random_tensor({3, 4}, rng), y = be->alloc({3, 4});
  be->copy(x, y);
  be->axpy(-2.0f, x, y);  // y = x - 2x = -x
  be->scale(y, -0.5f);    // y = x / 2
  for (int64_t i = 0; i < x.numel(); ++i) REQUIRE(y.f32()[i] == x.f32()[i] * 0.5f);
  Tensor up = be->alloc({12}), down = Tensor::zeros({3, 4});
  be->upload(x, up);
  be->download(up, down);
  for (int64_t i = 0; i < x.numel(); ++i) REQUIRE(down.f32()[i] == x.f32()[i]);
  Tensor small = be->alloc({11});
  CHECK_THROWS_AS(be->upload(x, small), Error);
}

TEST_CASE("cpu ops refuse wrong types and shapes", "[cpu_ops]") {
  auto be = make_cpu_backend();
  Tensor x = be->alloc({1, 4, 4, 4, 2});
  Tensor w = be->alloc({3, 3, 3, 3, 2});
  Tensor y = be->alloc({1, 4, 4, 4, 3});
  Tensor bad_y = be->alloc({1, 4, 4, 4, 2});
  Tensor half = be->alloc({1, 4, 4, 4, 2}, DType::bf16);
  Tensor w2 = be->alloc({3, 2, 2, 2, 2});
  Tensor bad_b = be->alloc({4});
  CHECK_NOTHROW(be->conv3d_forward(x, w, nullptr, y, false));
  CHECK_THROWS_AS(be->conv3d_forward(x, w, nullptr, bad_y, false), Error);
  CHECK_THROWS_AS(be->conv3d_forward(half, w, nullptr, y, false), Error);
  CHECK_THROWS_AS(be->conv3d_forward(x, w2, nullptr, y, false), Error);
  CHECK_THROWS_AS(be->conv3d_forward(x, w, &bad_b, y, false), Error);
  Tensor odd = be->alloc({1, 3, 4, 4, 2}), pooled = be->alloc({1, 1, 2, 2, 2});
  CHECK_THROWS_AS(be->maxpool_forward(odd, pooled), Error);
  CHECK_THROWS_AS(be->dropout_forward(x, x, 1.0f, 0), Error);  // p must be < 1
  CHECK_THROWS_AS(be->relu_forward(x, y), Error);
}
