#include "core/unet.h"

#include <cmath>

#include "core/error.h"
#include "core/philox.h"

namespace dq {

namespace {

std::string lvl(const char* prefix, int i) {
  return prefix + std::to_string(i);
}

Shape with_channels(const Shape& s, int64_t c) {
  return Shape{s[0], s[1], s[2], s[3], c};
}
Shape halved(const Shape& s, int64_t c) {
  return Shape{s[0], s[1] / 2, s[2] / 2, s[3] / 2, c};
}

// Index of the first element of a (N, D, H, W, C) activation in the same
// layer of the whole data-parallel batch, when its first sample is sample
// `sample_offset` of that batch.
uint64_t mask_offset(const Shape& s, int64_t sample_offset) {
  return static_cast<uint64_t>(sample_offset) * static_cast<uint64_t>(s.numel() / s[0]);
}

}  // namespace

UNet::UNet(const UNetConfig& cfg) : cfg_(cfg) {
  if (cfg.depth < 2 || cfg.depth > 7) fail("model.depth ", cfg.depth, " must be between 2 and 7");
  if (cfg.base_filters < 1) fail("model.base_filters must be at least 1");
  if (cfg.head_kernel != 1 && cfg.head_kernel != 3) fail("model.head_kernel must be 1 or 3");
  if (!(cfg.dropout >= 0.0f && cfg.dropout < 1.0f)) fail("model.dropout must be in [0, 1)");
  auto conv = [&](const std::string& name, int64_t ci, int64_t co, int64_t k) {
    layout_.add(name + ".w", Shape{co, k, k, k, ci});
    layout_.add(name + ".b", Shape{co});
  };
  for (int i = 0; i < cfg.depth; ++i) {
    conv(lvl("enc", i) + ".conv0", i == 0 ? 1 : filters(i - 1), filters(i), 3);
    conv(lvl("enc", i) + ".conv1", filters(i), filters(i), 3);
  }
  for (int i = cfg.depth - 2; i >= 0; --i) {
    layout_.add(lvl("up", i) + ".w", Shape{filters(i + 1), 2, 2, 2, filters(i)});  // (Ci,2,2,2,Co)
    layout_.add(lvl("up", i) + ".b", Shape{filters(i)});
    conv(lvl("dec", i) + ".conv0", 2 * filters(i), filters(i), 3);
    conv(lvl("dec", i) + ".conv1", filters(i), filters(i), 3);
  }
  conv("head", filters(0), 1, cfg.head_kernel);
}

void UNet::check_input(const Shape& x) const {
  if (x.rank() != 5 || x[4] != 1)
    fail("the U-Net takes (N, D, H, W, 1) field patches, got ", x.str());
  int64_t m = side_multiple();
  for (int a = 1; a <= 3; ++a) {
    if (x[a] < m || x[a] % m != 0)
      fail("input of ", x[3], " x ", x[2], " x ", x[1],
           " voxels: every side must be a multiple of ", m, " (the U-Net with depth ", cfg_.depth,
           " pools ", cfg_.depth - 1, " times); pad the volume");
  }
}

void UNet::init_he(Tensor& host_params, uint64_t seed) const {
  DQ_CHECK(host_params.numel() == layout_.total(), "parameter buffer has the wrong size");
  float* p = host_params.f32();
  std::fill(p, p + host_params.numel(), 0.0f);
  for (int t = 0; t < static_cast<int>(layout_.params().size()); ++t) {
    const ParamInfo& info = layout_[t];
    if (info.shape.rank() != 5) continue;  // biases start at zero
    // fan_in: inputs feeding one output. For a convolution k^3 * Ci; for the
    // stride-2 transposed convolution each output voxel sees one input voxel,
    // so Ci (the first weight dimension).
    bool deconv = info.name.rfind("up", 0) == 0;
    double fan_in =
        deconv ? static_cast<double>(info.shape[0])
               : static_cast<double>(info.shape[1] * info.shape[2] * info.shape[3] * info.shape[4]);
    double stddev = std::sqrt(2.0 / fan_in);
    uint64_t key = key_for(seed, static_cast<uint64_t>(t));
    for (int64_t i = 0; i < info.shape.numel(); ++i) {
      // Box-Muller on two counter-based uniforms; the half-step keeps log() finite.
      double u1 = philox_uniform(key, 2 * static_cast<uint64_t>(i)) + 0.5 / 16777216.0;
      double u2 = philox_uniform(key, 2 * static_cast<uint64_t>(i) + 1);
      double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
      p[info.offset + i] = static_cast<float>(stddev * z);
    }
  }
}

Tensor& UNet::buf(Backend& be, const std::string& name, const Shape& shape) {
  auto it = bufs_.find(name);
  if (it == bufs_.end() || it->second.shape() != shape || bufs_device_ != be.device()) {
    if (bufs_device_ != be.device()) bufs_.clear();
    bufs_device_ = be.device();
    it = bufs_.insert_or_assign(name, be.alloc(shape)).first;
  }
  return it->second;
}

void UNet::forward(Backend& be, const Tensor& params, const Tensor& x, Tensor& y, bool train,
                   uint64_t dropout_key, int64_t sample_offset) {
  check_input(x.shape());
  DQ_CHECK(y.shape() == x.shape(), "output shape ", y.shape().str(), " != input ", x.shape().str());
  auto P = [&](const std::string& name) { return layout_.view(params, layout_.find(name)); };
  const bool drop = train && cfg_.dropout > 0.0f;
  const int L = cfg_.depth;

  // Encoder. Per level: a0 = relu(conv0(in)), d0 = dropout(a0), a1 = relu(conv1(d0)),
  // d1 = dropout(a1); the skip is d1 and the next level's input is pool(d1).
  const Tensor* in = &x;
  for (int i = 0; i < L; ++i) {
    const std::string e = lvl("enc", i);
    Shape s = with_channels(in->shape(), filters(i));  // (N, D_i, H_i, W_i, F_i)
    Tensor& a0 = buf(be, e + ".a0", s);
    Tensor pw = P(e + ".conv0.w"), pb = P(e + ".conv0.b");
    be.conv3d_forward(*in, pw, &pb, a0, true);
    Tensor* d0 = &a0;
    if (drop) {
      d0 = &buf(be, e + ".d0", s);
      be.dropout_forward(a0, *d0, cfg_.dropout, key_for(dropout_key, 2 * i),
                         mask_offset(s, sample_offset));
    }
    Tensor& a1 = buf(be, e + ".a1", s);
    Tensor qw = P(e + ".conv1.w"), qb = P(e + ".conv1.b");
    be.conv3d_forward(*d0, qw, &qb, a1, true);
    Tensor* d1 = &a1;
    if (drop) {
      d1 = &buf(be, e + ".d1", s);
      be.dropout_forward(a1, *d1, cfg_.dropout, key_for(dropout_key, 2 * i + 1),
                         mask_offset(s, sample_offset));
    }
    if (i < L - 1) {
      Tensor& pooled = buf(be, e + ".pool", halved(s, filters(i)));
      be.maxpool_forward(*d1, pooled);
      in = &pooled;
    } else {
      in = d1;
    }
  }

  // Decoder. u = relu(up(cur)), cat = [u | skip], b0 = relu(conv0(cat)), b1 = relu(conv1(b0)).
  const Tensor* cur = in;
  for (int i = L - 2; i >= 0; --i) {
    const std::string e = lvl("enc", i), d = lvl("dec", i), u = lvl("up", i);
    const Tensor& skip = drop ? bufs_.at(e + ".d1") : bufs_.at(e + ".a1");
    Shape s = with_channels(skip.shape(), filters(i));
    Tensor& up = buf(be, u + ".out", s);
    Tensor uw = P(u + ".w"), ub = P(u + ".b");
    be.deconv3d_forward(*cur, uw, &ub, up, true);
    Tensor& cat = buf(be, d + ".cat", with_channels(s, 2 * filters(i)));
    be.concat_channels(up, skip, cat);
    Tensor& b0 = buf(be, d + ".b0", s);
    Tensor w0 = P(d + ".conv0.w"), c0 = P(d + ".conv0.b");
    be.conv3d_forward(cat, w0, &c0, b0, true);
    Tensor& b1 = buf(be, d + ".b1", s);
    Tensor w1 = P(d + ".conv1.w"), c1 = P(d + ".conv1.b");
    be.conv3d_forward(b0, w1, &c1, b1, true);
    cur = &b1;
  }

  Tensor hw = P("head.w"), hb = P("head.b");
  be.conv3d_forward(*cur, hw, &hb, y, false);
  if (cfg_.residual) be.axpy(1.0f, x, y);

  have_forward_ = train;
  last_dropout_key_ = dropout_key;
  last_sample_offset_ = sample_offset;
  last_input_ = x.shape();
  if (train) bufs_.insert_or_assign("input", x);  // a view: the caller keeps x alive until backward
}

void UNet::backward(Backend& be, const Tensor& params, const Tensor& dy, Tensor& dparams,
                    const GradsReady& on_ready) {
  DQ_CHECK(have_forward_, "UNet::backward needs a preceding forward(train = true)");
  DQ_CHECK(dy.shape() == last_input_, "dy shape ", dy.shape().str(), " != forward input ",
           last_input_.str());
  auto P = [&](const std::string& name) { return layout_.view(params, layout_.find(name)); };
  auto G = [&](const std::string& name) { return layout_.view(dparams, layout_.find(name)); };
  // Everything from the first parameter of `name` to the end is final.
  auto ready = [&](const std::string& first_param) {
    if (on_ready) on_ready(layout_[layout_.find(first_param)].offset);
  };
  const bool drop = cfg_.dropout > 0.0f;
  const int L = cfg_.depth;
  const Tensor& x = bufs_.at("input");
  // Dropout masks are not stored: dropout_backward redraws them from the
  // keys of the last training forward (counter-based RNG).
  be.fill(dparams, 0.0f);  // also clears the alignment gaps between parameters

  // Head: y = conv(b1_0) (+ x; the residual adds nothing to parameter gradients).
  const Tensor& top = bufs_.at("dec0.b1");
  Tensor gh = G("head.w"), ghb = G("head.b");
  be.conv3d_backward_filter(top, dy, gh, &ghb);
  Tensor* dcur = &buf(be, "g.dec0.b1", top.shape());
  be.conv3d_backward_data(dy, P("head.w"), *dcur);
  ready("head.w");

  // Decoder, top (level 0) to bottom (level L-2). dcur holds dL/d(b1_i).
  for (int i = 0; i <= L - 2; ++i) {
    const std::string e = lvl("enc", i), d = lvl("dec", i), u = lvl("up", i);
    const Tensor& b0 = bufs_.at(d + ".b0");
    const Tensor& b1 = bufs_.at(d + ".b1");
    Tensor& g = buf(be, "g.scratch" + std::to_string(i), b1.shape());
    be.relu_backward(b1, *dcur, g);
    Tensor gw1 = G(d + ".conv1.w"), gb1 = G(d + ".conv1.b");
    be.conv3d_backward_filter(b0, g, gw1, &gb1);
    Tensor& db0 = buf(be, "g." + d + ".b0", b0.shape());
    be.conv3d_backward_data(g, P(d + ".conv1.w"), db0);
    be.relu_backward(b0, db0, g);
    const Tensor& cat = bufs_.at(d + ".cat");
    Tensor gw0 = G(d + ".conv0.w"), gb0 = G(d + ".conv0.b");
    be.conv3d_backward_filter(cat, g, gw0, &gb0);
    Tensor& dcat = buf(be, "g." + d + ".cat", cat.shape());
    be.conv3d_backward_data(g, P(d + ".conv0.w"), dcat);
    Tensor& dup = buf(be, "g." + u + ".out", b1.shape());
    Tensor& dskip = buf(be, "g." + e + ".skip", b1.shape());
    be.split_channels(dcat, dup, dskip);
    const Tensor& up = bufs_.at(u + ".out");
    be.relu_backward(up, dup, dup);
    // The deconvolution's input: the bottleneck output, or the level below's b1.
    const Tensor& below = i == L - 2 ? bufs_.at(lvl("enc", L - 1) + (drop ? ".d1" : ".a1"))
                                     : bufs_.at(lvl("dec", i + 1) + ".b1");
    Tensor guw = G(u + ".w"), gub = G(u + ".b");
    be.deconv3d_backward_filter(below, dup, guw, &gub);
    dcur = &buf(be, "g.below" + std::to_string(i + 1), below.shape());
    be.deconv3d_backward_data(dup, P(u + ".w"), *dcur);
    ready(u + ".w");  // up{i} precedes dec{i} in the buffer
  }

  // Encoder, bottom (bottleneck) to top. dcur holds dL/d(d1) of the bottleneck;
  // at upper levels dL/d(d1) = skip gradient + pooling gradient.
  Tensor* dpooled = nullptr;
  for (int i = L - 1; i >= 0; --i) {
    const std::string e = lvl("enc", i);
    const Tensor& a0 = bufs_.at(e + ".a0");
    const Tensor& a1 = bufs_.at(e + ".a1");
    const Tensor& d0 = drop ? bufs_.at(e + ".d0") : a0;
    const Tensor& d1 = drop ? bufs_.at(e + ".d1") : a1;
    Tensor& gd1 = buf(be, "g." + e + ".d1", a1.shape());
    if (i == L - 1) {
      be.copy(*dcur, gd1);
    } else {
      be.maxpool_backward(d1, bufs_.at(e + ".pool"), *dpooled, gd1);
      be.axpy(1.0f, bufs_.at("g." + e + ".skip"), gd1);
    }
    Tensor& g = buf(be, "g." + e + ".scratch", a1.shape());
    if (drop) {
      be.dropout_backward(gd1, g, cfg_.dropout, key_for(last_dropout_key_, 2 * i + 1),
                          mask_offset(a1.shape(), last_sample_offset_));
      be.relu_backward(a1, g, g);
    } else {
      be.relu_backward(a1, gd1, g);
    }
    Tensor gw1 = G(e + ".conv1.w"), gb1 = G(e + ".conv1.b");
    be.conv3d_backward_filter(d0, g, gw1, &gb1);
    Tensor& gd0 = buf(be, "g." + e + ".d0", a0.shape());
    be.conv3d_backward_data(g, P(e + ".conv1.w"), gd0);
    if (drop) {
      be.dropout_backward(gd0, g, cfg_.dropout, key_for(last_dropout_key_, 2 * i),
                          mask_offset(a0.shape(), last_sample_offset_));
      be.relu_backward(a0, g, g);
    } else {
      be.relu_backward(a0, gd0, g);
    }
    const Tensor& in = i == 0 ? x : bufs_.at(lvl("enc", i - 1) + ".pool");
    Tensor gw0 = G(e + ".conv0.w"), gb0 = G(e + ".conv0.b");
    be.conv3d_backward_filter(in, g, gw0, &gb0);
    if (i > 0) {
      dpooled = &buf(be, "g." + e + ".in", in.shape());
      be.conv3d_backward_data(g, P(e + ".conv0.w"), *dpooled);
    }
    ready(e + ".conv0.w");  // for enc0 that is offset 0: the whole buffer
  }
}

double UNet::forward_flops(int64_t d, int64_t h, int64_t w) const {
  double flops = 0;
  double vox = static_cast<double>(d) * static_cast<double>(h) * static_cast<double>(w);
  for (int i = 0; i < cfg_.depth; ++i) {
    double v = vox / std::pow(8.0, i);
    double fi = filters(i), fin = i == 0 ? 1 : filters(i - 1);
    flops += 2 * v * 27 * (fin * fi + fi * fi);  // encoder convolutions
    if (i < cfg_.depth - 1) {
      flops += 2 * v * filters(i + 1) * fi;           // transposed conv (one tap per output)
      flops += 2 * v * 27 * (2 * fi * fi + fi * fi);  // decoder convolutions
    }
  }
  flops += 2 * vox * std::pow(cfg_.head_kernel, 3) * filters(0);  // head
  return flops;
}

}  // namespace dq
