// All trainable parameters live in one contiguous fp32 buffer; each named
// tensor is a view at an offset. Adam is then one pass over the buffer and
// the gradient all-reduce one call. The gradient buffer has the same layout.
#pragma once
#include <string>
#include <vector>

#include "core/nn/tensor.h"

namespace dq {

struct ParamInfo {
  std::string name;  // "enc0.conv0.w"
  Shape shape;
  int64_t offset = 0;  // in elements, into the flat buffer
};

class ParamLayout {
 public:
  // Appends a tensor; offsets are aligned to 16 elements (64 bytes) so every
  // view starts on a vector/cache-line boundary. Returns its index.
  int add(const std::string& name, const Shape& shape);
  const std::vector<ParamInfo>& params() const { return params_; }
  const ParamInfo& operator[](int i) const { return params_[static_cast<size_t>(i)]; }
  int find(const std::string& name) const;  // -1 if absent
  int64_t total() const { return total_; }  // elements, including alignment gaps
  int64_t count() const;                    // trainable scalars, without gaps

  // The view of parameter i inside a flat buffer laid out by this layout.
  Tensor view(const Tensor& flat, int i) const;

 private:
  std::vector<ParamInfo> params_;
  int64_t total_ = 0;
};

}  // namespace dq
