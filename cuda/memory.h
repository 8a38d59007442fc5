// Device memory: an RAII owner for one cudaMalloc, an Arena that carves
// aligned blocks out of one allocation made up front (so the training step
// never calls cudaMalloc), and explicit host <-> device copies of dq::Tensor.
// Device tensors are ordinary Tensors with Device::cuda whose owner keeps the
// allocation alive.
#pragma once
#include <cuda_runtime.h>

#include <cstddef>
#include <memory>

#include "core/nn/tensor.h"

namespace dq {

// One device allocation, freed on destruction. Move-only.
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  explicit DeviceBuffer(size_t bytes);  // not zeroed
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept;
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;

  void* data() const { return ptr_; }
  size_t size() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Bump allocator over one device allocation sized at start. Blocks are
// aligned to kAlignment bytes (enough for float4 loads and for cuDNN), are
// not zeroed, and stay valid until reset(). Tensors handed out share
// ownership of the allocation, so destroying the Arena first is safe; using
// them after reset() is a logic error the Arena cannot detect.
class Arena {
 public:
  static constexpr size_t kAlignment = 256;

  explicit Arena(size_t capacity_bytes);

  void* allocate(size_t bytes);
  Tensor tensor(const Shape& shape, DType dtype = DType::f32);
  void reset() { used_ = 0; }

  size_t capacity() const { return buffer_->size(); }
  size_t used() const { return used_; }
  size_t peak() const { return peak_; }  // largest used() since construction

 private:
  std::shared_ptr<DeviceBuffer> buffer_;
  size_t used_ = 0;
  size_t peak_ = 0;
};

// A device tensor with its own zeroed allocation (Backend::alloc semantics);
// the zeroing is queued on `stream`.
Tensor cuda_zeros(const Shape& shape, DType dtype = DType::f32, cudaStream_t stream = nullptr);

// Copies between a host tensor and a device tensor of the same shape and
// dtype. Both return once the copy has finished on `stream`, so the host
// tensor may be read or reused straight away.
void copy_to_device(const Tensor& host, Tensor& device, cudaStream_t stream = nullptr);
void copy_to_host(const Tensor& device, Tensor& host, cudaStream_t stream = nullptr);

// The same, allocating the destination.
Tensor to_device(const Tensor& host, cudaStream_t stream = nullptr);
Tensor to_host(const Tensor& device, cudaStream_t stream = nullptr);

}  // namespace dq
