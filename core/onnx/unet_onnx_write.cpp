// Writing the U-Net as an ONNX graph (core/onnx/unet_onnx.h).
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>

#include <fstream>

#include "core/error.h"
#include "core/io/output_files.h"
#include "core/onnx/unet_onnx.h"

namespace dq {

namespace {

// raw_data is little-endian IEEE float32; the tensors are copied as host floats.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "ONNX tensors need a little-endian host");
static_assert(sizeof(float) == 4, "ONNX float tensors are 4-byte IEEE");

struct GraphBuilder {
  onnx::GraphProto* g;

  void initializer(const std::string& name, const std::vector<int64_t>& dims,
                   const std::vector<float>& data) {
    onnx::TensorProto* t = g->add_initializer();
    t->set_name(name);
    t->set_data_type(onnx::TensorProto::FLOAT);
    for (int64_t d : dims) t->add_dims(d);
    t->set_raw_data(std::string(reinterpret_cast<const char*>(data.data()), data.size() * 4));
  }
  onnx::NodeProto* node(const std::string& op, const std::string& name,
                        const std::vector<std::string>& inputs, const std::string& output) {
    onnx::NodeProto* n = g->add_node();
    n->set_op_type(op);
    n->set_name(name);
    for (const std::string& in : inputs) n->add_input(in);
    n->add_output(output);
    return n;
  }
  static void ints(onnx::NodeProto* n, const std::string& name, int64_t value, int count) {
    onnx::AttributeProto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(onnx::AttributeProto::INTS);
    for (int i = 0; i < count; ++i) a->add_ints(value);
  }
};

// Our conv weight (Co, k, k, k, Ci) -> ONNX's (Co, Ci, k, k, k).
std::vector<float> conv_to_onnx(const Tensor& w) {
  const Shape& s = w.shape();
  const int64_t co = s[0], k = s[1], ci = s[4], k3 = k * k * k;
  std::vector<float> out(static_cast<size_t>(w.numel()));
  const float* p = w.f32();
  for (int64_t o = 0; o < co; ++o)
    for (int64_t t = 0; t < k3; ++t)
      for (int64_t i = 0; i < ci; ++i)
        out[static_cast<size_t>((o * ci + i) * k3 + t)] = p[(o * k3 + t) * ci + i];
  return out;
}

// Our transposed-conv weight (Ci, 2, 2, 2, Co) -> ONNX's (Ci, Co, 2, 2, 2).
std::vector<float> deconv_to_onnx(const Tensor& w) {
  const Shape& s = w.shape();
  const int64_t ci = s[0], co = s[4], k3 = 8;
  std::vector<float> out(static_cast<size_t>(w.numel()));
  const float* p = w.f32();
  for (int64_t i = 0; i < ci; ++i)
    for (int64_t t = 0; t < k3; ++t)
      for (int64_t o = 0; o < co; ++o)
        out[static_cast<size_t>((i * co + o) * k3 + t)] = p[(i * k3 + t) * co + o];
  return out;
}

std::vector<float> copy_of(const Tensor& b) {
  return std::vector<float>(b.f32(), b.f32() + b.numel());
}

void volume_value(onnx::ValueInfoProto* v, const std::string& name) {
  v->set_name(name);
  onnx::TypeProto_Tensor* t = v->mutable_type()->mutable_tensor_type();
  t->set_elem_type(onnx::TensorProto::FLOAT);
  onnx::TensorShapeProto* s = t->mutable_shape();
  s->add_dim()->set_dim_value(1);
  s->add_dim()->set_dim_value(1);
  for (const char* d : {"D", "H", "W"}) s->add_dim()->set_dim_param(d);
}

}  // namespace

void write_unet_onnx(const std::string& path, const UNetConfig& model, const Tensor& params,
                     const OnnxMetadata& metadata) {
  UNet net(model);
  const ParamLayout& layout = net.layout();
  DQ_CHECK(params.numel() == layout.total(), "ONNX export: parameter buffer has the wrong size");
  auto P = [&](const std::string& name) { return layout.view(params, layout.find(name)); };

  onnx::ModelProto m;
  m.set_ir_version(onnx::IR_VERSION);
  m.set_producer_name("deepqsm");
  m.set_model_version(1);
  m.set_doc_string("DeepQSM U-Net: local field (ppm) -> susceptibility (ppm), " +
                   describe_architecture(model));
  onnx::OperatorSetIdProto* opset = m.add_opset_import();
  opset->set_domain("");
  opset->set_version(kOnnxOpset);
  for (const auto& kv : metadata) {
    onnx::StringStringEntryProto* e = m.add_metadata_props();
    e->set_key(kv.first);
    e->set_value(kv.second);
  }
  GraphBuilder b{m.mutable_graph()};
  b.g->set_name("deepqsm_unet");
  volume_value(b.g->add_input(), "field");

  // A conv of ours: Conv (+ Relu); returns the output's value name.
  auto conv = [&](const std::string& name, const std::string& in, bool relu) {
    Tensor w = P(name + ".w"), bias = P(name + ".b");
    const int64_t k = w.shape()[1];
    b.initializer(name + ".w", {w.shape()[0], w.shape()[4], k, k, k}, conv_to_onnx(w));
    b.initializer(name + ".b", {bias.shape()[0]}, copy_of(bias));
    onnx::NodeProto* n = b.node("Conv", name, {in, name + ".w", name + ".b"}, name + ".conv");
    GraphBuilder::ints(n, "kernel_shape", k, 3);
    GraphBuilder::ints(n, "pads", k / 2, 6);
    GraphBuilder::ints(n, "strides", 1, 3);
    if (!relu) return name + ".conv";
    b.node("Relu", name + ".relu", {name + ".conv"}, name + ".relu");
    return name + ".relu";
  };

  const int L = model.depth;
  std::vector<std::string> skips(static_cast<size_t>(L));
  std::string cur = "field";
  for (int i = 0; i < L; ++i) {
    const std::string e = "enc" + std::to_string(i);
    cur = conv(e + ".conv0", cur, true);
    cur = conv(e + ".conv1", cur, true);
    skips[static_cast<size_t>(i)] = cur;
    if (i == L - 1) break;
    onnx::NodeProto* pool = b.node("MaxPool", e + ".pool", {cur}, e + ".pool");
    GraphBuilder::ints(pool, "kernel_shape", 2, 3);
    GraphBuilder::ints(pool, "strides", 2, 3);
    cur = e + ".pool";
  }
  for (int i = L - 2; i >= 0; --i) {
    const std::string u = "up" + std::to_string(i), d = "dec" + std::to_string(i);
    Tensor w = P(u + ".w"), bias = P(u + ".b");
    b.initializer(u + ".w", {w.shape()[0], w.shape()[4], 2, 2, 2}, deconv_to_onnx(w));
    b.initializer(u + ".b", {bias.shape()[0]}, copy_of(bias));
    onnx::NodeProto* up = b.node("ConvTranspose", u, {cur, u + ".w", u + ".b"}, u + ".deconv");
    GraphBuilder::ints(up, "kernel_shape", 2, 3);
    GraphBuilder::ints(up, "strides", 2, 3);
    b.node("Relu", u + ".relu", {u + ".deconv"}, u + ".relu");
    onnx::NodeProto* cat =
        b.node("Concat", d + ".cat", {u + ".relu", skips[static_cast<size_t>(i)]}, d + ".cat");
    onnx::AttributeProto* axis = cat->add_attribute();
    axis->set_name("axis");
    axis->set_type(onnx::AttributeProto::INT);
    axis->set_i(1);
    cur = conv(d + ".conv0", d + ".cat", true);
    cur = conv(d + ".conv1", cur, true);
  }
  cur = conv("head", cur, false);
  if (model.residual) {
    b.node("Add", "residual", {cur, "field"}, "residual");
    cur = "residual";
  }
  b.node("Identity", "output", {cur}, "chi");
  volume_value(b.g->add_output(), "chi");

  try {
    onnx::checker::check_model(m);
  } catch (const std::exception& ex) {
    fail(path, ": the exported graph fails onnx::checker: ", ex.what());
  }
  std::string bytes;
  if (!m.SerializeToString(&bytes)) fail(path, ": could not serialise the ONNX model");
  PendingFile out(path);
  {
    std::ofstream f(out.tmp(), std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.close();
    if (!f) fail(path, ": could not write ", bytes.size(), " bytes");
  }
  out.finish();
}

}  // namespace dq
