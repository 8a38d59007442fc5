// A thin RAII layer over cuDNN's backend descriptors (the graph API): one
// owner per cudnnBackendDescriptor_t, typed attribute setters, and errors
// that name the descriptor and the attribute that was refused, with
// cuDNN's own last-error text. Nothing here knows about convolutions; see
// cuda/nn/conv.cpp for the graphs built with it.
//
//   Descriptor t(CUDNN_BACKEND_TENSOR_DESCRIPTOR);
//   t.set(DQ_ATTR(CUDNN_ATTR_TENSOR_UNIQUE_ID), int64_t{1});
//   t.finalize();
#pragma once
#include <cudnn.h>

#include <cstdint>
#include <string>
#include <vector>

// Expands to the attribute and its spelled-out name, for error messages.
#define DQ_ATTR(name) name, #name

namespace dq::cudnn {

// "CUDNN_STATUS_NOT_SUPPORTED (cuDNN's last error message, if any)".
std::string status_text(cudnnStatus_t s);
// Reads and so empties cuDNN's last-error message, after a refusal that is
// expected (a configuration that does not build), so that it cannot be
// reported later as the cause of an unrelated failure.
void clear_last_error();
const char* descriptor_type_name(cudnnBackendDescriptorType_t t);

class Descriptor {
 public:
  Descriptor() = default;
  explicit Descriptor(cudnnBackendDescriptorType_t type);
  ~Descriptor();
  Descriptor(const Descriptor&) = delete;
  Descriptor& operator=(const Descriptor&) = delete;
  Descriptor(Descriptor&& o) noexcept;
  Descriptor& operator=(Descriptor&& o) noexcept;

  cudnnBackendDescriptor_t get() const { return desc_; }
  cudnnBackendDescriptorType_t type() const { return type_; }
  explicit operator bool() const { return desc_ != nullptr; }

  // Raw setter: throws dq::Error naming the descriptor type and attribute.
  Descriptor& set(cudnnBackendAttributeName_t name, const char* what,
                  cudnnBackendAttributeType_t type, int64_t count, const void* values);

  Descriptor& set(cudnnBackendAttributeName_t name, const char* what, int64_t v);
  Descriptor& set(cudnnBackendAttributeName_t name, const char* what,
                  const std::vector<int64_t>& v);
  Descriptor& set(cudnnBackendAttributeName_t name, const char* what, float v);
  Descriptor& set(cudnnBackendAttributeName_t name, const char* what, bool v);
  Descriptor& set(cudnnBackendAttributeName_t name, const char* what, cudnnDataType_t v);
  Descriptor& set(cudnnBackendAttributeName_t name, const char* what, cudnnConvolutionMode_t v);
  Descriptor& set(cudnnBackendAttributeName_t name, const char* what, cudnnPointwiseMode_t v);
  Descriptor& set(cudnnBackendAttributeName_t name, const char* what, cudnnBackendHeurMode_t v);
  Descriptor& set(cudnnBackendAttributeName_t name, const char* what, cudnnHandle_t v);
  Descriptor& set(cudnnBackendAttributeName_t name, const char* what, const Descriptor& v);
  Descriptor& set(cudnnBackendAttributeName_t name, const char* what,
                  const std::vector<const Descriptor*>& v);

  // Throws with the descriptor type and cuDNN's reason.
  void finalize();
  // For descriptors whose refusal is an answer ("this engine cannot run
  // this graph"), not an error.
  cudnnStatus_t try_finalize();

 private:
  cudnnBackendDescriptor_t desc_ = nullptr;
  cudnnBackendDescriptorType_t type_ = CUDNN_BACKEND_TENSOR_DESCRIPTOR;
};

// Reads one int64 attribute of a finalized descriptor.
int64_t get_int64(const Descriptor& d, cudnnBackendAttributeName_t name, const char* what);

}  // namespace dq::cudnn

// cuDNN's check: throws dq::Error with file:line and status_text.
#define DQ_CUDNN(call)                                                                    \
  do {                                                                                    \
    cudnnStatus_t s_ = (call);                                                            \
    if (s_ != CUDNN_STATUS_SUCCESS)                                                       \
      ::dq::fail(__FILE__, ":", __LINE__, ": ", #call, ": ", ::dq::cudnn::status_text(s_)); \
  } while (0)
