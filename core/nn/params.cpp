#include "core/nn/params.h"

#include "core/error.h"

namespace dq {

int ParamLayout::add(const std::string& name, const Shape& shape) {
  DQ_CHECK(find(name) < 0, "duplicate parameter name ", name);
  ParamInfo p;
  p.name = name;
  p.shape = shape;
  p.offset = total_;
  total_ += (shape.numel() + 15) / 16 * 16;
  params_.push_back(p);
  return static_cast<int>(params_.size()) - 1;
}

int ParamLayout::find(const std::string& name) const {
  for (size_t i = 0; i < params_.size(); ++i)
    if (params_[i].name == name) return static_cast<int>(i);
  return -1;
}

int64_t ParamLayout::count() const {
  int64_t n = 0;
  for (const auto& p : params_) n += p.shape.numel();
  return n;
}

Tensor ParamLayout::view(const Tensor& flat, int i) const {
  DQ_CHECK(flat.numel() == total_, "flat buffer has ", flat.numel(), " elements, layout needs ",
           total_);
  const ParamInfo& p = (*this)[i];
  return flat.slice(p.offset, p.shape);
}

}  // namespace dq
