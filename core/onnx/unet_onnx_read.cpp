// Reading a U-Net of our architecture from an ONNX graph (core/onnx/unet_onnx.h):
// the nodes are walked in order and matched to the layers of core/nn/unet.h.
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "core/error.h"
#include "core/onnx/unet_onnx.h"

namespace dq {

namespace {

// raw_data is little-endian IEEE float32; the tensors are copied as host floats.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "ONNX tensors need a little-endian host");
static_assert(sizeof(float) == 4, "ONNX float tensors are 4-byte IEEE");

// One layer with weights, in the order met (which is the flat buffer's).
struct Layer {
  std::string param;  // our parameter base name ("enc0.conv0", "up2", "head")
  std::vector<float> w, b;
  Shape w_shape;  // ours
  std::string node;
};

class Importer {
 public:
  Importer(std::string path, const onnx::GraphProto& g) : path_(std::move(path)), g_(g) {}

  OnnxUNet run();

 private:
  [[noreturn]] void refuse(const onnx::NodeProto& n, const std::string& why) const {
    fail(path_, ": node '", node_name(n), "' (", n.op_type(),
         ") cannot be mapped to deepqsm's U-Net: ", why);
  }
  std::string node_name(const onnx::NodeProto& n) const {
    return n.name().empty() ? "#" + std::to_string(index_) : n.name();
  }
  // The activation a value name stands for, through Identity and Dropout.
  std::string act(const std::string& v) const {
    auto it = alias_.find(v);
    return it == alias_.end() ? v : it->second;
  }
  const onnx::TensorProto* constant(const std::string& v) const {
    auto it = consts_.find(act(v));
    return it == consts_.end() ? nullptr : it->second;
  }
  std::vector<float> floats(const onnx::NodeProto& n, const onnx::TensorProto& t) const;
  std::map<std::string, const onnx::AttributeProto*> attrs(const onnx::NodeProto& n) const;
  void check_ints(const onnx::NodeProto& n, const onnx::AttributeProto* a, int64_t want, int count,
                  const char* what) const;
  void expect_input(const onnx::NodeProto& n, const std::string& want) const {
    if (n.input_size() < 1 || act(n.input(0)) != want)
      refuse(n, "its input is not the output of the layer before it");
  }
  // The attributes of a 2x2x2, stride-2 window: MaxPool, or ConvTranspose
  // when `transposed`.
  void window_2x2x2(const onnx::NodeProto& n, bool transposed) const;
  void conv(const onnx::NodeProto& n, const std::string& param);
  void deconv(const onnx::NodeProto& n, const std::string& param);

  std::string path_;
  const onnx::GraphProto& g_;
  int index_ = 0;
  std::map<std::string, const onnx::TensorProto*> consts_;
  std::map<std::string, std::string> alias_;
  std::vector<Layer> layers_;
  std::string cur_;  // the activation the next layer must read
};

std::vector<float> Importer::floats(const onnx::NodeProto& n, const onnx::TensorProto& t) const {
  if (t.data_type() != onnx::TensorProto::FLOAT)
    refuse(n, "weight '" + t.name() + "' is not float32");
  if (t.data_location() == onnx::TensorProto::EXTERNAL)
    refuse(n, "weight '" + t.name() + "' is stored outside the file (external data)");
  int64_t numel = 1;
  for (int64_t d : t.dims()) numel *= d;
  std::vector<float> out(static_cast<size_t>(numel));
  if (t.has_raw_data()) {
    if (static_cast<int64_t>(t.raw_data().size()) != numel * 4)
      refuse(n, "weight '" + t.name() + "' holds " + std::to_string(t.raw_data().size()) +
                    " bytes for " + std::to_string(numel) + " floats");
    std::memcpy(out.data(), t.raw_data().data(), out.size() * 4);
  } else {
    if (t.float_data_size() != numel)
      refuse(n, "weight '" + t.name() + "' holds " + std::to_string(t.float_data_size()) +
                    " values for " + std::to_string(numel));
    std::copy(t.float_data().begin(), t.float_data().end(), out.begin());
  }
  return out;
}

std::map<std::string, const onnx::AttributeProto*> Importer::attrs(const onnx::NodeProto& n) const {
  std::map<std::string, const onnx::AttributeProto*> out;
  for (const onnx::AttributeProto& a : n.attribute()) out[a.name()] = &a;
  return out;
}

void Importer::check_ints(const onnx::NodeProto& n, const onnx::AttributeProto* a, int64_t want,
                          int count, const char* what) const {
  if (!a) return;  // absent: the callers check which attributes must be present
  if (a->ints_size() != count)
    refuse(n, std::string(what) + " has " + std::to_string(a->ints_size()) + " values, not " +
                  std::to_string(count));
  for (int64_t v : a->ints())
    if (v != want)
      refuse(n, std::string(what) + " " + std::to_string(v) + " where deepqsm's U-Net has " +
                    std::to_string(want));
}

void Importer::window_2x2x2(const onnx::NodeProto& n, bool transposed) const {
  const auto all = attrs(n);
  for (const auto& a : all) {
    const std::string& name = a.first;
    if (name == "kernel_shape")
      check_ints(n, a.second, 2, 3, "kernel_shape");
    else if (name == "strides")
      check_ints(n, a.second, 2, 3, "strides");
    else if (name == "pads")
      check_ints(n, a.second, 0, 6, "pads");
    else if (name == "dilations")
      check_ints(n, a.second, 1, 3, "dilations");
    else if (name == "auto_pad") {
      if (a.second->s() != "NOTSET" && a.second->s() != "VALID")
        refuse(n, "auto_pad " + a.second->s());
    } else if (transposed && name == "output_padding") {
      check_ints(n, a.second, 0, 3, "output_padding");
    } else if (transposed && name == "group") {
      if (a.second->i() != 1) refuse(n, "grouped transposed convolution");
    } else if (!transposed && (name == "ceil_mode" || name == "storage_order")) {
      // No effect: every side is even where we pool, and the indices are unused.
    } else {
      refuse(n, "attribute " + name + " is not one deepqsm maps");
    }
  }
  // ONNX's default stride is 1: a 2x2x2 window without strides is not ours.
  if (!all.count("strides")) refuse(n, "no strides (ONNX's default 1; deepqsm's U-Net has 2)");
  if (!transposed && !all.count("kernel_shape")) refuse(n, "MaxPool without kernel_shape");
}

void Importer::conv(const onnx::NodeProto& n, const std::string& param) {
  expect_input(n, cur_);
  const onnx::TensorProto* w = n.input_size() > 1 ? constant(n.input(1)) : nullptr;
  if (!w || w->dims_size() != 5) refuse(n, "its weight is not a constant 5-D tensor");
  const int64_t co = w->dims(0), ci = w->dims(1), k = w->dims(2);
  if (w->dims(3) != k || w->dims(4) != k || (k != 1 && k != 3))
    refuse(n, "kernel is not 1x1x1 or 3x3x3");
  for (const auto& a : attrs(n)) {
    const std::string& name = a.first;
    if (name == "kernel_shape")
      check_ints(n, a.second, k, 3, "kernel_shape");
    else if (name == "pads")
      check_ints(n, a.second, k / 2, 6, "pads");
    else if (name == "strides")
      check_ints(n, a.second, 1, 3, "strides");
    else if (name == "dilations")
      check_ints(n, a.second, 1, 3, "dilations");
    else if (name == "group") {
      if (a.second->i() != 1) refuse(n, "grouped convolution");
    } else if (name == "auto_pad") {
      const std::string& v = a.second->s();
      if (v != "NOTSET" && v != "SAME_UPPER" && v != "SAME_LOWER" && !(v == "VALID" && k == 1))
        refuse(n, "auto_pad " + v + " is not 'same' padding");
    } else {
      refuse(n, "attribute " + name + " is not one deepqsm maps");
    }
  }
  // ONNX's default padding is 0: a 3x3x3 conv without pads or a 'same'
  // auto_pad shrinks the volume, which deepqsm's U-Net never does.
  if (k == 3) {
    const auto all = attrs(n);
    const auto ap = all.find("auto_pad");
    const bool same = ap != all.end() && ap->second->s().rfind("SAME_", 0) == 0;
    if (!same && !all.count("pads"))
      refuse(n, "no pads (ONNX's default 0; deepqsm's U-Net pads its 3x3x3 convolutions by 1)");
  }
  Layer l{param, floats(n, *w), {}, Shape{co, k, k, k, ci}, node_name(n)};
  // ONNX (Co, Ci, k, k, k) -> ours (Co, k, k, k, Ci).
  const int64_t k3 = k * k * k;
  std::vector<float> ours(l.w.size());
  for (int64_t o = 0; o < co; ++o)
    for (int64_t i = 0; i < ci; ++i)
      for (int64_t t = 0; t < k3; ++t)
        ours[static_cast<size_t>((o * k3 + t) * ci + i)] =
            l.w[static_cast<size_t>((o * ci + i) * k3 + t)];
  l.w = std::move(ours);
  if (n.input_size() > 2 && !n.input(2).empty()) {
    const onnx::TensorProto* bias = constant(n.input(2));
    if (!bias) refuse(n, "its bias is not a constant");
    l.b = floats(n, *bias);
    if (static_cast<int64_t>(l.b.size()) != co)
      refuse(n, "bias size differs from its output channels");
  } else {
    l.b.assign(static_cast<size_t>(co), 0.0f);
  }
  layers_.push_back(std::move(l));
  cur_ = n.output(0);
}

void Importer::deconv(const onnx::NodeProto& n, const std::string& param) {
  expect_input(n, cur_);
  const onnx::TensorProto* w = n.input_size() > 1 ? constant(n.input(1)) : nullptr;
  if (!w || w->dims_size() != 5) refuse(n, "its weight is not a constant 5-D tensor");
  const int64_t ci = w->dims(0), co = w->dims(1);
  if (w->dims(2) != 2 || w->dims(3) != 2 || w->dims(4) != 2) refuse(n, "kernel is not 2x2x2");
  window_2x2x2(n, /*transposed=*/true);
  Layer l{param, floats(n, *w), {}, Shape{ci, 2, 2, 2, co}, node_name(n)};
  // ONNX (Ci, Co, 2, 2, 2) -> ours (Ci, 2, 2, 2, Co).
  std::vector<float> ours(l.w.size());
  for (int64_t i = 0; i < ci; ++i)
    for (int64_t o = 0; o < co; ++o)
      for (int64_t t = 0; t < 8; ++t)
        ours[static_cast<size_t>((i * 8 + t) * co + o)] =
            l.w[static_cast<size_t>((i * co + o) * 8 + t)];
  l.w = std::move(ours);
  if (n.input_size() > 2 && !n.input(2).empty()) {
    const onnx::TensorProto* bias = constant(n.input(2));
    if (!bias) refuse(n, "its bias is not a constant");
    l.b = floats(n, *bias);
    if (static_cast<int64_t>(l.b.size()) != co)
      refuse(n, "bias size differs from its output channels");
  } else {
    l.b.assign(static_cast<size_t>(co), 0.0f);
  }
  layers_.push_back(std::move(l));
  cur_ = n.output(0);
}

OnnxUNet Importer::run() {
  for (const onnx::TensorProto& t : g_.initializer()) consts_[t.name()] = &t;
  std::string input;
  for (const onnx::ValueInfoProto& v : g_.input()) {
    if (consts_.count(v.name())) continue;  // older exporters list initializers as inputs
    if (!input.empty())
      fail(path_, ": the graph has more than one input ('", input, "', '", v.name(), "')");
    input = v.name();
  }
  if (input.empty()) fail(path_, ": the graph has no input");
  if (g_.output_size() != 1) fail(path_, ": the graph has ", g_.output_size(), " outputs, not one");
  for (const onnx::ValueInfoProto& v : g_.input()) {
    if (v.name() != input) continue;
    const onnx::TypeProto_Tensor& t = v.type().tensor_type();
    if (t.elem_type() != onnx::TensorProto::FLOAT)
      fail(path_, ": input '", input, "' is not float32");
    if (t.has_shape() && (t.shape().dim_size() != 5 ||
                          (t.shape().dim(1).has_dim_value() && t.shape().dim(1).dim_value() != 1)))
      fail(path_, ": input '", input, "' is not [N, 1, D, H, W]");
  }

  // Phases of the walk; `level` is the U-Net level the next layer belongs to.
  enum Phase {
    enc_conv,
    enc_relu,
    after_enc,
    up_relu,
    cat,
    dec_conv,
    dec_relu,
    after_dec,
    after_head,
    done
  };
  Phase phase = enc_conv;
  int level = 0, conv_in_level = 0, depth = 0;
  bool residual = false;
  std::vector<std::string> skips;
  cur_ = input;
  for (index_ = 0; index_ < g_.node_size(); ++index_) {
    const onnx::NodeProto& n = g_.node(index_);
    const std::string& op = n.op_type();
    if (!n.domain().empty() && n.domain() != "ai.onnx")
      refuse(n, "operator of domain " + n.domain());
    if (n.output_size() < 1) refuse(n, "a node without outputs");
    if (op != "Constant" && n.input_size() < 1) refuse(n, "a node without inputs");
    if (op == "Constant") {
      auto a = attrs(n);
      if (!a.count("value") || n.output_size() != 1) refuse(n, "a constant that is not a tensor");
      consts_[n.output(0)] = &a.at("value")->t();
      continue;
    }
    if (op == "Identity" || op == "Dropout") {
      if (op == "Dropout" && n.input_size() > 2 && !n.input(2).empty()) {
        const onnx::TensorProto* mode = constant(n.input(2));
        if (!mode || (mode->int32_data_size() > 0 && mode->int32_data(0) != 0) ||
            (mode->has_raw_data() && mode->raw_data().find_first_not_of('\0') != std::string::npos))
          refuse(n, "dropout in training mode");
      }
      alias_[n.output(0)] = act(n.input(0));
      continue;
    }
    const std::string L = std::to_string(level);
    switch (phase) {
      case enc_conv:
        if (op != "Conv") refuse(n, "expected the Conv of encoder level " + L);
        conv(n, "enc" + L + ".conv" + std::to_string(conv_in_level));
        phase = enc_relu;
        break;
      case enc_relu:
        if (op != "Relu") refuse(n, "expected a Relu after encoder level " + L + "'s Conv");
        expect_input(n, cur_);
        cur_ = n.output(0);
        if (conv_in_level == 0) {
          conv_in_level = 1;
          phase = enc_conv;
        } else {
          skips.push_back(cur_);
          phase = after_enc;
        }
        break;
      case after_enc:
        if (op == "MaxPool") {
          expect_input(n, cur_);
          window_2x2x2(n, /*transposed=*/false);
          cur_ = n.output(0);
          ++level;
          conv_in_level = 0;
          phase = enc_conv;
          break;
        }
        if (op != "ConvTranspose")
          refuse(n, "expected MaxPool or, after the bottleneck, ConvTranspose");
        if (level == 0) refuse(n, "a U-Net needs at least one pooling before upsampling");
        depth = level + 1;
        --level;
        deconv(n, "up" + std::to_string(level));
        phase = up_relu;
        break;
      case up_relu:
        if (op != "Relu") refuse(n, "expected a Relu after the ConvTranspose of level " + L);
        expect_input(n, cur_);
        cur_ = n.output(0);
        phase = cat;
        break;
      case cat: {
        if (op != "Concat") refuse(n, "expected the Concat [upsampled, skip] of level " + L);
        auto a = attrs(n);
        const int64_t axis = a.count("axis") ? a.at("axis")->i() : -999;
        if (axis != 1 && axis != -4) refuse(n, "Concat not along the channel axis");
        if (n.input_size() != 2 || act(n.input(0)) != cur_ ||
            act(n.input(1)) != skips[static_cast<size_t>(level)])
          refuse(n, "inputs are not [upsampled, skip of encoder level " + L + "] in that order");
        cur_ = n.output(0);
        conv_in_level = 0;
        phase = dec_conv;
        break;
      }
      case dec_conv:
        if (op != "Conv") refuse(n, "expected the Conv of decoder level " + L);
        conv(n, "dec" + L + ".conv" + std::to_string(conv_in_level));
        phase = dec_relu;
        break;
      case dec_relu:
        if (op != "Relu") refuse(n, "expected a Relu after decoder level " + L + "'s Conv");
        expect_input(n, cur_);
        cur_ = n.output(0);
        if (conv_in_level == 0) {
          conv_in_level = 1;
          phase = dec_conv;
        } else {
          phase = after_dec;
        }
        break;
      case after_dec:
        if (op == "ConvTranspose" && level > 0) {
          --level;
          deconv(n, "up" + std::to_string(level));
          phase = up_relu;
        } else if (op == "Conv" && level == 0) {
          conv(n, "head");
          phase = after_head;
        } else {
          refuse(n, level > 0 ? "expected the ConvTranspose of level " + std::to_string(level - 1)
                              : "expected the head Conv");
        }
        break;
      case after_head:
        if (op != "Add") refuse(n, "expected nothing after the head but the residual Add");
        if (n.input_size() != 2 || !((act(n.input(0)) == cur_ && act(n.input(1)) == input) ||
                                     (act(n.input(1)) == cur_ && act(n.input(0)) == input)))
          refuse(n, "the Add is not head output + input field");
        residual = true;
        cur_ = n.output(0);
        phase = done;
        break;
      case done: refuse(n, "nothing follows the residual Add in deepqsm's U-Net");
    }
  }
  if (phase != after_head && phase != done)
    fail(path_, ": the graph ends before the U-Net's head (", layers_.size(),
         " layers with weights found)");
  if (act(g_.output(0).name()) != cur_)
    fail(path_, ": the graph's output '", g_.output(0).name(), "' is not the U-Net's last layer");

  OnnxUNet out;
  out.model.depth = depth;
  out.model.base_filters = static_cast<int>(layers_.front().w_shape[0]);
  out.model.dropout = 0.0f;
  out.model.residual = residual;
  out.model.head_kernel = static_cast<int>(layers_.back().w_shape[1]);
  if (depth < 2 || depth > 7)
    fail(path_, ": a U-Net of depth ", depth, " (deepqsm supports 2 to 7)");
  UNet net(out.model);
  const ParamLayout& layout = net.layout();
  out.params = Tensor::zeros(Shape{layout.total()});
  for (const Layer& l : layers_) {
    const int wi = layout.find(l.param + ".w"), bi = layout.find(l.param + ".b");
    DQ_CHECK(wi >= 0 && bi >= 0, "ONNX import: no parameter ", l.param);
    if (layout[wi].shape != l.w_shape)
      fail(path_, ": node '", l.node, "' has weights of shape ", l.w_shape.str(),
           " (ours) where a U-Net of ", describe_architecture(out.model), " has ",
           layout[wi].shape.str(), " for ", l.param);
    std::copy(l.w.begin(), l.w.end(), out.params.f32() + layout[wi].offset);
    std::copy(l.b.begin(), l.b.end(), out.params.f32() + layout[bi].offset);
  }
  return out;
}

}  // namespace

OnnxUNet read_unet_onnx(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail(path, ": cannot open");
  std::stringstream ss;
  ss << f.rdbuf();
  onnx::ModelProto m;
  // No onnx::checker here: a file from a newer exporter (a newer IR version
  // than Debian's ONNX knows) must still load, and the walk checks every
  // node, attribute and weight it uses.
  if (!m.ParseFromString(ss.str())) fail(path, ": not an ONNX model (protobuf parse failed)");
  OnnxUNet out = Importer(path, m.graph()).run();
  for (const onnx::StringStringEntryProto& e : m.metadata_props())
    out.metadata.emplace_back(e.key(), e.value());
  return out;
}

}  // namespace dq
