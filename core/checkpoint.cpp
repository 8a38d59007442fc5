#include "core/checkpoint.h"

#include <cstdio>

#include "core/error.h"
#include "core/h5io.h"

namespace dq {

namespace {
constexpr const char* kFormat = "deepqsm-checkpoint";
constexpr int64_t kVersion = 1;
}  // namespace

void save_checkpoint(const std::string& path, const UNet& net, const Tensor& params,
                     const Tensor* adam_m, const Tensor* adam_v, int64_t step,
                     const std::string& config_json) {
  const ParamLayout& layout = net.layout();
  DQ_CHECK(params.numel() == layout.total(), "checkpoint: parameter buffer does not match the model");
  const std::string tmp = path + ".tmp";
  {
    H5File f(tmp, H5File::Mode::truncate);
    const UNetConfig& m = net.config();
    f.set_attr("/", "format", std::string(kFormat));
    f.set_attr("/", "version", kVersion);
    f.set_attr("/", "step", step);
    f.set_attr("/", "config", config_json);
    f.set_attr("/", "depth", static_cast<int64_t>(m.depth));
    f.set_attr("/", "base_filters", static_cast<int64_t>(m.base_filters));
    f.set_attr("/", "dropout", static_cast<double>(m.dropout));
    f.set_attr("/", "residual", static_cast<int64_t>(m.residual));
    f.set_attr("/", "head_kernel", static_cast<int64_t>(m.head_kernel));
    f.create_group("params");
    for (int i = 0; i < static_cast<int>(layout.params().size()); ++i) {
      Tensor v = layout.view(params, i);
      f.write_floats("params/" + layout[i].name, v.shape().dims, v.f32());
    }
    if (adam_m && adam_v) {
      f.create_group("adam");
      f.write_floats("adam/m", {adam_m->numel()}, adam_m->f32());
      f.write_floats("adam/v", {adam_v->numel()}, adam_v->f32());
    }
    f.flush();
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    fail("cannot move checkpoint ", tmp, " to ", path);
}

CheckpointData load_checkpoint(const std::string& path, bool weights_only) {
  H5File f(path, H5File::Mode::read);
  if (!f.has_attr("/", "format") || f.attr_string("/", "format") != kFormat)
    fail(path, ": not a deepqsm checkpoint (no format attribute '", kFormat, "')");
  int64_t version = f.attr_int("/", "version");
  if (version != kVersion)
    fail(path, ": checkpoint version ", version, " is not supported (this build reads version ",
         kVersion, ")");
  CheckpointData ck;
  ck.model.depth = static_cast<int>(f.attr_int("/", "depth"));
  ck.model.base_filters = static_cast<int>(f.attr_int("/", "base_filters"));
  ck.model.dropout = static_cast<float>(f.attr_double("/", "dropout"));
  ck.model.residual = f.attr_int("/", "residual") != 0;
  ck.model.head_kernel = static_cast<int>(f.attr_int("/", "head_kernel"));
  ck.step = f.attr_int("/", "step");
  ck.config_json = f.attr_string("/", "config");
  UNet net(ck.model);
  const ParamLayout& layout = net.layout();
  ck.params = Tensor::zeros(Shape{layout.total()});
  for (int i = 0; i < static_cast<int>(layout.params().size()); ++i) {
    const ParamInfo& p = layout[i];
    std::vector<int64_t> dims;
    std::vector<float> data = f.read_floats("params/" + p.name, &dims);
    if (dims != p.shape.dims)
      fail(path, ": parameter ", p.name, " has shape ", Shape(dims).str(), ", the model needs ",
           p.shape.str());
    Tensor v = layout.view(ck.params, i);
    std::copy(data.begin(), data.end(), v.f32());
  }
  if (!weights_only && f.exists("adam")) {
    for (auto [name, dst] : {std::pair{"adam/m", &ck.adam_m}, std::pair{"adam/v", &ck.adam_v}}) {
      std::vector<float> data = f.read_floats(name);
      if (static_cast<int64_t>(data.size()) != layout.total())
        fail(path, ": ", name, " has ", data.size(), " values, the model needs ", layout.total());
      *dst = Tensor::zeros(Shape{layout.total()});
      std::copy(data.begin(), data.end(), dst->f32());
    }
  }
  return ck;
}

}  // namespace dq
