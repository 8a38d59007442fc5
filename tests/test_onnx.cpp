// ONNX export and import of the U-Net (core/onnx/unet_onnx.h): what the
// exporter writes reads back bit for bit; a graph of the same layers with
// PyTorch's naming and packaging (torch.onnx.export's node and value names,
// weights behind Identity or in Constant nodes, typed instead of raw data,
// initializers listed as inputs) maps to the same weights; any other graph
// is refused in one line naming its first node that does not fit; and the
// files PyTorch itself exported from the reference U-Net
// (tests/reference/make_unet_onnx.py) import to the reference's weights and
// output. That our graph computes what UNet::forward computes is checked in
// ONNX Runtime by tests/onnx/check_onnxruntime.py (ctest onnx_runtime).
#include <onnx/onnx_pb.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>

#include "core/error.h"
#include "core/io/h5io.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/onnx/unet_onnx.h"
#include "tests/test_util.h"

using namespace dq;
using dq::test::TempDir;

namespace {

struct Net {
  UNetConfig cfg;
  Tensor params;
};

Net random_net(int depth, int base, bool residual, int head_kernel) {
  Net n;
  n.cfg.depth = depth;
  n.cfg.base_filters = base;
  n.cfg.residual = residual;
  n.cfg.head_kernel = head_kernel;
  n.cfg.dropout = 0.0f;
  UNet net(n.cfg);
  n.params = Tensor::zeros(Shape{net.layout().total()});
  net.init_he(n.params, 42);
  // Nonzero biases, so their placement is checked too.
  for (const ParamInfo& p : net.layout().params())
    if (p.shape.rank() == 1)
      for (int64_t i = 0; i < p.shape.numel(); ++i)
        n.params.f32()[p.offset + i] = 0.01f * static_cast<float>(i + 1) + 0.001f * p.offset;
  return n;
}

void require_same_weights(const Net& want, const OnnxUNet& got) {
  REQUIRE(same_architecture(got.model, want.cfg));
  UNet net(want.cfg);
  for (const ParamInfo& p : net.layout().params()) {
    INFO(p.name);
    REQUIRE(std::memcmp(got.params.f32() + p.offset, want.params.f32() + p.offset,
                        static_cast<size_t>(p.shape.numel()) * 4) == 0);
  }
}

onnx::ModelProto load(const std::string& path) {
  onnx::ModelProto m;
  std::ifstream f(path, std::ios::binary);
  REQUIRE(m.ParseFromIstream(&f));
  return m;
}

void save(const onnx::ModelProto& m, const std::string& path) {
  std::ofstream f(path, std::ios::binary);
  REQUIRE(m.SerializeToOstream(&f));
}

std::string import_error(const std::string& path) {
  try {
    read_unet_onnx(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// Our export rewritten the way torch.onnx.export (TorchScript exporter,
// opset 17) packages the same layers.
void torch_style(onnx::ModelProto& m) {
  onnx::GraphProto* g = m.mutable_graph();
  std::map<std::string, std::string> rename;  // our value name -> torch's
  int k = 0;
  rename["field"] = "input.1";
  for (onnx::TensorProto& t : *g->mutable_initializer()) {
    rename[t.name()] =
        "onnx::" + std::string(t.dims_size() == 1 ? "Conv_" : "Conv_w") + std::to_string(100 + k++);
    // Biases as float_data instead of raw bytes.
    if (t.dims_size() == 1) {
      std::vector<float> v(t.raw_data().size() / 4);
      std::memcpy(v.data(), t.raw_data().data(), t.raw_data().size());
      t.clear_raw_data();
      for (float x : v) t.add_float_data(x);
    }
  }
  // The final Identity goes; the last real node writes "output" directly.
  REQUIRE(g->node(g->node_size() - 1).op_type() == "Identity");
  const std::string last = g->node(g->node_size() - 1).input(0);
  g->mutable_node()->RemoveLast();
  rename[last] = "output";
  std::map<std::string, int> count;
  for (onnx::NodeProto& n : *g->mutable_node()) {
    const std::string name = "/" + n.op_type() + "_" + std::to_string(count[n.op_type()]++);
    n.set_name(name);
    if (!rename.count(n.output(0))) rename[n.output(0)] = name + "_output_0";
  }
  for (onnx::NodeProto& n : *g->mutable_node()) {
    for (std::string& in : *n.mutable_input()) in = rename.at(in);
    for (std::string& out : *n.mutable_output()) out = rename.at(out);
  }
  for (onnx::TensorProto& t : *g->mutable_initializer()) t.set_name(rename.at(t.name()));
  g->mutable_input(0)->set_name("input.1");
  g->mutable_output(0)->set_name("output");
  // The first conv's weight behind an Identity and the last conv's bias in
  // a Constant node, both placed first (still a topological order).
  onnx::NodeProto* conv0 = nullptr;
  onnx::NodeProto* head = nullptr;
  for (onnx::NodeProto& n : *g->mutable_node())
    if (n.op_type() == "Conv") {
      if (!conv0) conv0 = &n;
      head = &n;
    }
  REQUIRE(conv0 != nullptr);
  const std::string w0 = conv0->input(1), hb = head->input(2);
  conv0->set_input(1, "/Identity_w0_output_0");
  head->set_input(2, "/Constant_hb_output_0");
  onnx::NodeProto id;
  id.set_op_type("Identity");
  id.set_name("/Identity_w0");
  id.add_input(w0);
  id.add_output("/Identity_w0_output_0");
  onnx::NodeProto cst;
  cst.set_op_type("Constant");
  cst.set_name("/Constant_hb");
  cst.add_output("/Constant_hb_output_0");
  onnx::AttributeProto* value = cst.add_attribute();
  value->set_name("value");
  value->set_type(onnx::AttributeProto::TENSOR);
  for (auto it = g->mutable_initializer()->begin(); it != g->mutable_initializer()->end(); ++it)
    if (it->name() == hb) {
      *value->mutable_t() = *it;
      value->mutable_t()->clear_name();
      g->mutable_initializer()->erase(it);
      break;
    }
  onnx::GraphProto out = *g;
  out.clear_node();
  *out.add_node() = cst;
  *out.add_node() = id;
  for (const onnx::NodeProto& n : g->node()) *out.add_node() = n;
  // keep_initializers_as_inputs=True lists every weight as a graph input too.
  for (const onnx::TensorProto& t : g->initializer()) {
    onnx::ValueInfoProto* v = out.add_input();
    v->set_name(t.name());
    v->mutable_type()->mutable_tensor_type()->set_elem_type(onnx::TensorProto::FLOAT);
  }
  *g = out;
}

}  // namespace

TEST_CASE("ONNX export reads back bit for bit, with its metadata", "[onnx]") {
  TempDir dir("deepqsm-onnx");
  for (bool residual : {false, true}) {
    for (int head : {1, 3}) {
      Net n = random_net(3, 4, residual, head);
      const std::string path = dir.file("net.onnx");
      write_unet_onnx(path, n.cfg, n.params, {{"deepqsm.side_multiple", "4"}, {"k", "v"}});
      OnnxUNet back = read_unet_onnx(path);
      require_same_weights(n, back);
      REQUIRE(back.metadata == OnnxMetadata{{"deepqsm.side_multiple", "4"}, {"k", "v"}});
      const onnx::ModelProto m = load(path);
      REQUIRE(m.opset_import(0).version() >= 17);
      REQUIRE(m.graph().input(0).type().tensor_type().shape().dim(2).dim_param() == "D");
    }
  }
}

TEST_CASE("ONNX import maps a graph packaged as torch.onnx.export packages it", "[onnx]") {
  TempDir dir("deepqsm-onnx");
  Net n = random_net(4, 3, true, 3);
  const std::string ours = dir.file("ours.onnx"), torch = dir.file("torch.onnx");
  write_unet_onnx(ours, n.cfg, n.params, {});
  onnx::ModelProto m = load(ours);
  torch_style(m);
  save(m, torch);
  require_same_weights(n, read_unet_onnx(torch));
}

TEST_CASE("ONNX import names the first node it cannot map", "[onnx]") {
  TempDir dir("deepqsm-onnx");
  Net n = random_net(3, 2, false, 1);
  const std::string path = dir.file("net.onnx"), bad = dir.file("bad.onnx");
  write_unet_onnx(path, n.cfg, n.params, {});

  SECTION("an activation we do not have") {
    onnx::ModelProto m = load(path);
    for (onnx::NodeProto& node : *m.mutable_graph()->mutable_node())
      if (node.name() == "enc1.conv0.relu") node.set_op_type("Sigmoid");
    save(m, bad);
    const std::string e = import_error(bad);
    REQUIRE(e.find("node 'enc1.conv0.relu' (Sigmoid)") != std::string::npos);
    REQUIRE(e.find(bad) != std::string::npos);
    REQUIRE(e.find('\n') == std::string::npos);
  }
  SECTION("the skip concatenated first") {
    onnx::ModelProto m = load(path);
    for (onnx::NodeProto& node : *m.mutable_graph()->mutable_node())
      if (node.op_type() == "Concat") {
        const std::string a = node.input(0);
        node.set_input(0, node.input(1));
        node.set_input(1, a);
      }
    save(m, bad);
    REQUIRE(import_error(bad).find("(Concat) cannot be mapped") != std::string::npos);
  }
  SECTION("a strided convolution") {
    onnx::ModelProto m = load(path);
    for (onnx::NodeProto& node : *m.mutable_graph()->mutable_node())
      if (node.name() == "dec0.conv1")
        for (onnx::AttributeProto& a : *node.mutable_attribute())
          if (a.name() == "strides") a.set_ints(0, 2);
    save(m, bad);
    REQUIRE(import_error(bad).find("node 'dec0.conv1' (Conv)") != std::string::npos);
  }
  // ONNX's defaults are pads 0 and strides 1: a node that leaves them out
  // is an unpadded convolution or a stride-1 window, not ours (onnxruntime
  // runs the first and returns a smaller volume).
  SECTION("a 3x3x3 convolution without pads") {
    onnx::ModelProto m = load(path);
    for (onnx::NodeProto& node : *m.mutable_graph()->mutable_node())
      if (node.name() == "dec0.conv1") {
        auto* attrs = node.mutable_attribute();
        for (int i = 0; i < attrs->size(); ++i)
          if (attrs->Get(i).name() == "pads") attrs->DeleteSubrange(i--, 1);
      }
    save(m, bad);
    const std::string e = import_error(bad);
    REQUIRE(e.find("node 'dec0.conv1' (Conv)") != std::string::npos);
    REQUIRE(e.find("no pads") != std::string::npos);
  }
  SECTION("a pooling or upsampling window without strides") {
    for (const char* op : {"MaxPool", "ConvTranspose"}) {
      onnx::ModelProto m = load(path);
      for (onnx::NodeProto& node : *m.mutable_graph()->mutable_node())
        if (node.op_type() == op) {
          auto* attrs = node.mutable_attribute();
          for (int i = 0; i < attrs->size(); ++i)
            if (attrs->Get(i).name() == "strides") attrs->DeleteSubrange(i--, 1);
        }
      save(m, bad);
      const std::string e = import_error(bad);
      CAPTURE(op, e);
      REQUIRE(e.find(std::string("(") + op + ")") != std::string::npos);
      REQUIRE(e.find("no strides") != std::string::npos);
    }
  }
  SECTION("a file that is not ONNX") {
    std::ofstream(bad) << "not a model";
    REQUIRE(import_error(bad).find("not an ONNX model") != std::string::npos);
  }
}

TEST_CASE("ONNX files written by torch.onnx.export import to the reference U-Net",
          "[onnx][reference]") {
  const std::string dir = std::string(DEEPQSM_SOURCE_DIR) + "/tests/reference/";
  const H5File ref(dir + "unet_small.h5", H5File::Mode::read);
  std::vector<int64_t> xdims;
  const std::vector<float> x = ref.read_floats("x", &xdims);
  const Shape xs(xdims);
  for (const auto& c :
       {std::make_pair(std::string("unet_small_torch.onnx"), std::string("")),
        std::make_pair(std::string("unet_small_plain_torch.onnx"), std::string("plain/"))}) {
    INFO(c.first);
    const OnnxUNet m = read_unet_onnx(dir + c.first);
    const std::string obj = c.second.empty() ? "/" : "plain";
    REQUIRE(m.model.depth == ref.attr_int(obj, "depth"));
    REQUIRE(m.model.base_filters == ref.attr_int(obj, "base_filters"));
    REQUIRE(m.model.head_kernel == ref.attr_int(obj, "head_kernel"));
    REQUIRE(m.model.residual == (ref.attr_int(obj, "residual") != 0));
    UNet net(m.model);
    for (const ParamInfo& p : net.layout().params()) {
      INFO(p.name);
      const std::vector<float> want = ref.read_floats(c.second + "params/" + p.name);
      REQUIRE(std::memcmp(m.params.f32() + p.offset, want.data(), want.size() * 4) == 0);
    }
    // The imported weights reproduce PyTorch's output (float64) to 1e-4.
    auto be = make_cpu_backend();
    Tensor params = be->alloc(Shape{net.layout().total()}), xt = be->alloc(xs), y = be->alloc(xs);
    be->upload(m.params, params);
    Tensor xh = Tensor::zeros(xs);
    std::copy(x.begin(), x.end(), xh.f32());
    be->upload(xh, xt);
    net.forward(*be, params, xt, y, /*train=*/false);
    Tensor yh = Tensor::zeros(xs);
    be->download(y, yh);
    const std::vector<float> want = ref.read_floats(c.second + "y");
    double worst = 0, scale = 0;
    for (size_t i = 0; i < want.size(); ++i) {
      worst = std::max(worst, std::fabs(static_cast<double>(yh.f32()[i]) - want[i]));
      scale = std::max(scale, std::fabs(static_cast<double>(want[i])));
    }
    CHECK(worst / scale < 1e-4);
  }
}
