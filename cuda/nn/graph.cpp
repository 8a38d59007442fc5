#include "cuda/nn/graph.h"

#include <utility>

#include "core/error.h"

namespace dq::cudnn {

std::string status_text(cudnnStatus_t s) {
  std::string text = cudnnGetErrorString(s);
  char last[512] = {0};
  cudnnGetLastErrorString(last, sizeof(last));
  if (last[0]) text += std::string(" (") + last + ")";
  return text;
}

void clear_last_error() {
  char last[512];
  cudnnGetLastErrorString(last, sizeof(last));
}

const char* descriptor_type_name(cudnnBackendDescriptorType_t t) {
  switch (t) {
    case CUDNN_BACKEND_POINTWISE_DESCRIPTOR: return "CUDNN_BACKEND_POINTWISE_DESCRIPTOR";
    case CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR: return "CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR";
    case CUDNN_BACKEND_ENGINE_DESCRIPTOR: return "CUDNN_BACKEND_ENGINE_DESCRIPTOR";
    case CUDNN_BACKEND_ENGINECFG_DESCRIPTOR: return "CUDNN_BACKEND_ENGINECFG_DESCRIPTOR";
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR: return "CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR";
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: return "CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR";
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR:
      return "CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR";
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR:
      return "CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_FILTER_DESCRIPTOR";
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR:
      return "CUDNN_BACKEND_OPERATION_CONVOLUTION_BACKWARD_DATA_DESCRIPTOR";
    case CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR:
      return "CUDNN_BACKEND_OPERATION_POINTWISE_DESCRIPTOR";
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: return "CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR";
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR: return "CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR";
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR: return "CUDNN_BACKEND_TENSOR_DESCRIPTOR";
    default: return "cuDNN backend descriptor";
  }
}

Descriptor::Descriptor(cudnnBackendDescriptorType_t type) : type_(type) {
  cudnnStatus_t s = cudnnBackendCreateDescriptor(type, &desc_);
  if (s != CUDNN_STATUS_SUCCESS) {
    desc_ = nullptr;
    fail("cuDNN: creating a ", descriptor_type_name(type), " failed: ", status_text(s));
  }
}

Descriptor::~Descriptor() {
  // Destroying fails only for a descriptor cuDNN never made; nothing to do then.
  if (desc_) cudnnBackendDestroyDescriptor(desc_);
}

Descriptor::Descriptor(Descriptor&& o) noexcept
    : desc_(std::exchange(o.desc_, nullptr)), type_(o.type_) {}

Descriptor& Descriptor::operator=(Descriptor&& o) noexcept {
  if (this != &o) {
    if (desc_) cudnnBackendDestroyDescriptor(desc_);
    desc_ = std::exchange(o.desc_, nullptr);
    type_ = o.type_;
  }
  return *this;
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what,
                            cudnnBackendAttributeType_t type, int64_t count, const void* values) {
  DQ_CHECK(desc_ != nullptr, "setting ", what, " on an empty cuDNN descriptor");
  cudnnStatus_t s = cudnnBackendSetAttribute(desc_, name, type, count, values);
  if (s != CUDNN_STATUS_SUCCESS)
    fail("cuDNN: setting ", what, " on a ", descriptor_type_name(type_),
         " failed: ", status_text(s));
  return *this;
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what, int64_t v) {
  return set(name, what, CUDNN_TYPE_INT64, 1, &v);
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what,
                            const std::vector<int64_t>& v) {
  return set(name, what, CUDNN_TYPE_INT64, static_cast<int64_t>(v.size()), v.data());
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what, float v) {
  return set(name, what, CUDNN_TYPE_FLOAT, 1, &v);
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what, bool v) {
  return set(name, what, CUDNN_TYPE_BOOLEAN, 1, &v);
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what, cudnnDataType_t v) {
  return set(name, what, CUDNN_TYPE_DATA_TYPE, 1, &v);
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what,
                            cudnnConvolutionMode_t v) {
  return set(name, what, CUDNN_TYPE_CONVOLUTION_MODE, 1, &v);
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what,
                            cudnnPointwiseMode_t v) {
  return set(name, what, CUDNN_TYPE_POINTWISE_MODE, 1, &v);
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what,
                            cudnnBackendHeurMode_t v) {
  return set(name, what, CUDNN_TYPE_HEUR_MODE, 1, &v);
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what, cudnnHandle_t v) {
  return set(name, what, CUDNN_TYPE_HANDLE, 1, &v);
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what,
                            const Descriptor& v) {
  DQ_CHECK(v.desc_ != nullptr, "setting ", what, " to an empty cuDNN descriptor");
  cudnnBackendDescriptor_t raw = v.desc_;
  return set(name, what, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &raw);
}

Descriptor& Descriptor::set(cudnnBackendAttributeName_t name, const char* what,
                            const std::vector<const Descriptor*>& v) {
  std::vector<cudnnBackendDescriptor_t> raw;
  raw.reserve(v.size());
  for (const Descriptor* d : v) {
    DQ_CHECK(d && d->desc_, "setting ", what, " with an empty cuDNN descriptor");
    raw.push_back(d->desc_);
  }
  return set(name, what, CUDNN_TYPE_BACKEND_DESCRIPTOR, static_cast<int64_t>(raw.size()),
             raw.data());
}

void Descriptor::finalize() {
  cudnnStatus_t s = try_finalize();
  if (s != CUDNN_STATUS_SUCCESS)
    fail("cuDNN: finalizing a ", descriptor_type_name(type_), " failed: ", status_text(s));
}

cudnnStatus_t Descriptor::try_finalize() {
  DQ_CHECK(desc_ != nullptr, "finalizing an empty cuDNN descriptor");
  return cudnnBackendFinalize(desc_);
}

int64_t get_int64(const Descriptor& d, cudnnBackendAttributeName_t name, const char* what) {
  int64_t value = 0, count = 0;
  cudnnStatus_t s = cudnnBackendGetAttribute(d.get(), name, CUDNN_TYPE_INT64, 1, &count, &value);
  if (s != CUDNN_STATUS_SUCCESS || count != 1)
    fail("cuDNN: reading ", what, " of a ", descriptor_type_name(d.type()),
         " failed: ", status_text(s));
  return value;
}

}  // namespace dq::cudnn
