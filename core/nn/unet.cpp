#include "core/nn/unet.h"

#include <cmath>

#include "core/error.h"
#include "core/nn/philox.h"

namespace dq {

bool same_architecture(const UNetConfig& a, const UNetConfig& b) {
  return a.depth == b.depth && a.base_filters == b.base_filters && a.residual == b.residual &&
         a.head_kernel == b.head_kernel;
}

std::string describe_architecture(const UNetConfig& m) {
  return "depth " + std::to_string(m.depth) + ", base " + std::to_string(m.base_filters) +
         ", residual " + (m.residual ? "true" : "false") + ", head_kernel " +
         std::to_string(m.head_kernel);
}

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
  if (cfg.depth < kMinDepth || cfg.depth > kMaxDepth)
    fail("model.depth ", cfg.depth, " must be in ", kMinDepth, "..", kMaxDepth);
  if (cfg.base_filters < 1 || cfg.base_filters > kMaxBaseFilters)
    fail("model.base_filters ", cfg.base_filters, " must be in 1..", kMaxBaseFilters);
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

std::map<std::string, Shape> UNet::buffer_plan(const Shape& x) const {
  // Level i's activations are s_i = (N, D_i, H_i, W_i, F_i), D_i = D / 2^i.
  // Kept from the forward pass for the backward pass: the encoder's d0, d1
  // (dropout runs in place, so the ReLU outputs before it are not kept) and
  // pooled d1, the decoder's upsampled input, b0 and b1. The concat's buffer
  // is shared: the forward pass feeds it to conv0, the backward pass rebuilds
  // it for conv0's filter gradient and then overwrites it with dL/d(cat).
  // Gradient scratch: g{i}.a and g{i}.b take turns holding the gradient
  // between the layers of level i, and g{i}.skip carries the skip's gradient
  // from decoder level i down to encoder level i. At full resolution that is
  // 10 volumes of F_0 channels per sample (the concat counts twice), down
  // from 19 when every activation and gradient had a buffer of its own.
  std::map<std::string, Shape> plan;
  const int L = cfg_.depth;
  Shape s = with_channels(x, filters(0));
  for (int i = 0; i < L; ++i) {
    if (i > 0) s = halved(s, filters(i));
    const std::string e = lvl("enc", i), d = lvl("dec", i), g = lvl("g", i);
    plan[e + ".d0"] = s;
    plan[e + ".d1"] = s;
    plan[g + ".a"] = s;
    plan[g + ".b"] = s;
    if (i == L - 1) break;  // the bottleneck has no pooling and no decoder level
    plan[e + ".pool"] = halved(s, filters(i));
    plan[lvl("up", i) + ".out"] = s;
    plan[d + ".cat"] = with_channels(s, 2 * filters(i));
    plan[d + ".b0"] = s;
    plan[d + ".b1"] = s;
    plan[g + ".skip"] = s;
  }
  return plan;
}

int64_t UNet::activation_bytes(const Shape& x) const {
  check_input(x);
  int64_t elements = 0;
  for (const auto& entry : buffer_plan(x)) elements += entry.second.numel();
  return elements * static_cast<int64_t>(dtype_size(DType::f32));
}

int64_t UNet::buffer_bytes() const {
  int64_t bytes = 0;
  for (const auto& entry : bufs_) bytes += static_cast<int64_t>(entry.second.nbytes());
  return bytes;
}

Tensor& UNet::buf(Backend& be, const std::string& name) {
  auto it = bufs_.find(name);
  if (it == bufs_.end()) {
    auto planned = plan_.find(name);
    DQ_CHECK(planned != plan_.end(), "UNet: buffer ", name, " is missing from the buffer plan");
    it = bufs_.emplace(name, be.alloc(planned->second)).first;
    ++allocations_;
  }
  return it->second;
}

void UNet::forward(Backend& be, const Tensor& params, const Tensor& x, Tensor& y, bool train,
                   uint64_t dropout_key, int64_t sample_offset) {
  check_input(x.shape());
  DQ_CHECK(y.shape() == x.shape(), "output shape ", y.shape().str(), " != input ", x.shape().str());
  if (plan_.empty() || x.shape() != last_input_ || be.device() != bufs_device_) {
    // Every buffer's shape follows the input's, so none of the old ones fits.
    bufs_.clear();
    plan_ = buffer_plan(x.shape());
    bufs_device_ = be.device();
  }
  last_input_ = x.shape();
  auto P = [&](const std::string& name) { return layout_.view(params, layout_.find(name)); };
  const bool drop = train && cfg_.dropout > 0.0f;
  const int L = cfg_.depth;

  // Encoder. Per level: d0 = dropout(relu(conv0(in))), d1 = dropout(relu(conv1(d0))),
  // dropout in place (the identity outside training); the skip is d1 and the
  // next level's input is pool(d1).
  const Tensor* in = &x;
  for (int i = 0; i < L; ++i) {
    const std::string e = lvl("enc", i);
    Tensor& d0 = buf(be, e + ".d0");  // (N, D_i, H_i, W_i, F_i)
    Tensor pw = P(e + ".conv0.w"), pb = P(e + ".conv0.b");
    be.conv3d_forward(*in, pw, &pb, d0, true);
    if (drop)
      be.dropout_forward(d0, d0, cfg_.dropout, key_for(dropout_key, 2 * i),
                         mask_offset(d0.shape(), sample_offset));
    Tensor& d1 = buf(be, e + ".d1");
    Tensor qw = P(e + ".conv1.w"), qb = P(e + ".conv1.b");
    be.conv3d_forward(d0, qw, &qb, d1, true);
    if (drop)
      be.dropout_forward(d1, d1, cfg_.dropout, key_for(dropout_key, 2 * i + 1),
                         mask_offset(d1.shape(), sample_offset));
    if (i < L - 1) {
      Tensor& pooled = buf(be, e + ".pool");  // (N, D_i / 2, H_i / 2, W_i / 2, F_i)
      be.maxpool_forward(d1, pooled);
      in = &pooled;
    } else {
      in = &d1;
    }
  }

  // Decoder. u = relu(up(cur)), cat = [u | skip], b0 = relu(conv0(cat)), b1 = relu(conv1(b0)).
  const Tensor* cur = in;
  for (int i = L - 2; i >= 0; --i) {
    const std::string e = lvl("enc", i), d = lvl("dec", i), u = lvl("up", i);
    const Tensor& skip = bufs_.at(e + ".d1");
    Tensor& up = buf(be, u + ".out");
    Tensor uw = P(u + ".w"), ub = P(u + ".b");
    be.deconv3d_forward(*cur, uw, &ub, up, true);
    Tensor& cat = buf(be, d + ".cat");  // (N, D_i, H_i, W_i, 2 F_i)
    be.concat_channels(up, skip, cat);
    // Without a backward pass to come, b0 and b1 take the buffers of this
    // level's encoder d0 and of up (same shapes, both dead by now): two
    // fewer volumes of F_i channels per level (at full resolution 7 -> 5).
    Tensor& b0 = buf(be, train ? d + ".b0" : e + ".d0");
    Tensor w0 = P(d + ".conv0.w"), c0 = P(d + ".conv0.b");
    be.conv3d_forward(cat, w0, &c0, b0, true);
    Tensor& b1 = buf(be, train ? d + ".b1" : u + ".out");
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
  input_ = train ? x : Tensor();
}

void UNet::backward(Backend& be, const Tensor& params, const Tensor& dy, Tensor& dparams,
                    const GradsReady& on_ready) {
  DQ_CHECK(have_forward_, "UNet::backward needs a preceding forward(train = true)");
  DQ_CHECK(dy.shape() == last_input_, "dy shape ", dy.shape().str(), " != forward input ",
           last_input_.str());
  DQ_CHECK(be.device() == bufs_device_, "UNet::backward on ", device_name(be.device()),
           " after a forward on ", device_name(bufs_device_));
  auto P = [&](const std::string& name) { return layout_.view(params, layout_.find(name)); };
  auto G = [&](const std::string& name) { return layout_.view(dparams, layout_.find(name)); };
  // Everything from the first parameter of `name` to the end is final.
  auto ready = [&](const std::string& first_param) {
    if (on_ready) on_ready(layout_[layout_.find(first_param)].offset);
  };
  const bool drop = cfg_.dropout > 0.0f;
  const int L = cfg_.depth;
  const Tensor& x = input_;
  // Dropout masks are not stored: dropout_backward redraws them from the
  // keys of the last training forward (counter-based RNG).
  be.fill(dparams, 0.0f);  // also clears the alignment gaps between parameters

  // Head: y = conv(b1_0) (+ x; the residual adds nothing to parameter gradients).
  const Tensor& top = bufs_.at("dec0.b1");
  Tensor gh = G("head.w"), ghb = G("head.b");
  be.conv3d_backward_filter(top, dy, gh, &ghb);
  be.conv3d_backward_data(dy, P("head.w"), buf(be, "g0.a"));
  ready("head.w");

  // Decoder, top (level 0) to bottom (level L-2). g{i}.a arrives holding
  // dL/d(b1_i); ReLU gradients run in place.
  for (int i = 0; i <= L - 2; ++i) {
    const std::string d = lvl("dec", i), u = lvl("up", i), g = lvl("g", i);
    const Tensor& b0 = bufs_.at(d + ".b0");
    const Tensor& b1 = bufs_.at(d + ".b1");
    Tensor& ga = buf(be, g + ".a");
    Tensor& gb = buf(be, g + ".b");
    be.relu_backward(b1, ga, ga);
    Tensor gw1 = G(d + ".conv1.w"), gb1 = G(d + ".conv1.b");
    be.conv3d_backward_filter(b0, ga, gw1, &gb1);
    be.conv3d_backward_data(ga, P(d + ".conv1.w"), gb);
    be.relu_backward(b0, gb, gb);
    // cat's buffer ends this level holding dL/d(cat), so cat is rebuilt
    // from its halves rather than read back (which keeps backward
    // repeatable); the copy is cheap next to the convolutions.
    const Tensor& up = bufs_.at(u + ".out");
    Tensor& cat = bufs_.at(d + ".cat");
    be.concat_channels(up, bufs_.at(lvl("enc", i) + ".d1"), cat);
    Tensor gw0 = G(d + ".conv0.w"), gb0 = G(d + ".conv0.b");
    be.conv3d_backward_filter(cat, gb, gw0, &gb0);
    be.conv3d_backward_data(gb, P(d + ".conv0.w"), cat);
    Tensor& dup = ga;  // free again: its gradient went into gb
    be.split_channels(cat, dup, buf(be, g + ".skip"));
    be.relu_backward(up, dup, dup);
    // The deconvolution's input: the bottleneck output, or the level below's b1.
    const Tensor& below =
        i == L - 2 ? bufs_.at(lvl("enc", L - 1) + ".d1") : bufs_.at(lvl("dec", i + 1) + ".b1");
    Tensor guw = G(u + ".w"), gub = G(u + ".b");
    be.deconv3d_backward_filter(below, dup, guw, &gub);
    be.deconv3d_backward_data(dup, P(u + ".w"), buf(be, lvl("g", i + 1) + ".a"));
    ready(u + ".w");  // up{i} precedes dec{i} in the buffer
  }

  // Encoder, bottom (bottleneck) to top. g{i}.a holds dL/d(d1): for the
  // bottleneck it came from up{L-2}; at upper levels it is the pooling
  // gradient plus the skip gradient.
  //
  // Only d = dropout(relu(.)) was kept, not the ReLU output a, so d > 0
  // masks the ReLU gradient. That is exact: dropout_backward has already
  // zeroed the dropped elements, and a kept element is a * (1 / (1 - p)),
  // positive exactly when a is (the factor is >= 1, so no positive a rounds
  // to 0).
  Tensor dpooled;  // dL/d(pool_i), written by level i+1
  for (int i = L - 1; i >= 0; --i) {
    const std::string e = lvl("enc", i), g = lvl("g", i);
    const Tensor& d0 = bufs_.at(e + ".d0");
    const Tensor& d1 = bufs_.at(e + ".d1");
    Tensor& ga = buf(be, g + ".a");
    Tensor& gb = buf(be, g + ".b");
    if (i < L - 1) {
      be.maxpool_backward(d1, bufs_.at(e + ".pool"), dpooled, ga);
      be.axpy(1.0f, bufs_.at(g + ".skip"), ga);
    }
    if (drop)
      be.dropout_backward(ga, ga, cfg_.dropout, key_for(last_dropout_key_, 2 * i + 1),
                          mask_offset(d1.shape(), last_sample_offset_));
    be.relu_backward(d1, ga, ga);
    Tensor gw1 = G(e + ".conv1.w"), gb1 = G(e + ".conv1.b");
    be.conv3d_backward_filter(d0, ga, gw1, &gb1);
    be.conv3d_backward_data(ga, P(e + ".conv1.w"), gb);
    if (drop)
      be.dropout_backward(gb, gb, cfg_.dropout, key_for(last_dropout_key_, 2 * i),
                          mask_offset(d0.shape(), last_sample_offset_));
    be.relu_backward(d0, gb, gb);
    const Tensor& in = i == 0 ? x : bufs_.at(lvl("enc", i - 1) + ".pool");
    Tensor gw0 = G(e + ".conv0.w"), gb0 = G(e + ".conv0.b");
    be.conv3d_backward_filter(in, gb, gw0, &gb0);
    if (i > 0) {
      // ga is free again; pool_{i-1} (N, D_i, H_i, W_i, F_{i-1}) fills its first half.
      dpooled = ga.slice(0, in.shape());
      be.conv3d_backward_data(gb, P(e + ".conv0.w"), dpooled);
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
