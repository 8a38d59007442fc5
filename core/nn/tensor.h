// Tensor: a shape, a storage type, a device tag and a pointer into shared
// storage. Activations are NDHWC (channels last); weights are
// (Co, kD, kH, kW, Ci) for convolutions and (Ci, 2, 2, 2, Co) for transposed
// convolutions, so the channel a kernel reads is always the fastest index.
// Moving data between devices is explicit (Backend::upload / download).
#pragma once
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

namespace dq {

enum class DType : uint8_t { f32, bf16, f16 };
enum class Device : uint8_t { cpu, cuda };

size_t dtype_size(DType t);
const char* dtype_name(DType t);
DType dtype_from_name(const std::string& name);  // "fp32"|"bf16"|"fp16"
const char* device_name(Device d);

// Up to five dimensions; for activations (N, D, H, W, C).
struct Shape {
  std::vector<int64_t> dims;

  Shape() = default;
  Shape(std::initializer_list<int64_t> d) : dims(d) {}
  explicit Shape(std::vector<int64_t> d) : dims(std::move(d)) {}

  int rank() const { return static_cast<int>(dims.size()); }
  int64_t operator[](int i) const { return dims[static_cast<size_t>(i)]; }
  int64_t numel() const;
  bool operator==(const Shape& o) const { return dims == o.dims; }
  bool operator!=(const Shape& o) const { return dims != o.dims; }
  std::string str() const;  // "(2, 32, 32, 32, 8)"
};

class Tensor {
 public:
  Tensor() = default;

  // Host tensor, zero-initialised.
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32);
  // The same, zeroed on the CPU thread pool (core/parallel.h): zeroing is the
  // first touch, where the kernel maps each page, so the page faults are
  // spread over the cores. For the calling thread's large buffers (the CPU
  // backend's); not from a worker thread that shares the cores with others
  // (the generators'): use zeros there.
  static Tensor zeros_parallel(const Shape& shape, DType dtype = DType::f32);
  // Wraps memory owned elsewhere (a view into a parameter buffer, or a
  // device allocation owned by `owner`).
  static Tensor wrap(void* ptr, const Shape& shape, DType dtype, Device device,
                     std::shared_ptr<void> owner = nullptr);

  const Shape& shape() const { return shape_; }
  int64_t dim(int i) const { return shape_[i]; }
  int64_t numel() const { return shape_.numel(); }
  size_t nbytes() const { return static_cast<size_t>(numel()) * dtype_size(dtype_); }
  DType dtype() const { return dtype_; }
  Device device() const { return device_; }
  bool defined() const { return ptr_ != nullptr || numel() == 0; }

  void* raw() { return ptr_; }
  const void* raw() const { return ptr_; }
  // Typed access to host fp32 data; checks dtype and device.
  float* f32();
  const float* f32() const;

  // The same memory seen with another shape of equal element count.
  Tensor reshaped(const Shape& shape) const;
  // Elements [offset, offset + shape.numel()) of this tensor as a new view.
  Tensor slice(int64_t offset, const Shape& shape) const;

 private:
  std::shared_ptr<void> owner_;
  void* ptr_ = nullptr;
  Shape shape_;
  DType dtype_ = DType::f32;
  Device device_ = Device::cpu;
};

// Storage conversions (round to nearest even) used for bf16/fp16 tensors.
uint16_t float_to_bf16(float f);
float bf16_to_float(uint16_t h);
uint16_t float_to_f16(float f);
float f16_to_float(uint16_t h);

// Host copy of any-dtype host tensor as fp32 values.
std::vector<float> to_float_vector(const Tensor& t);

}  // namespace dq
