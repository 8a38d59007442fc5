#include "core/nn/tensor.h"

#include <cstring>
#include <sstream>

#include "core/error.h"
#include "core/parallel.h"

namespace dq {

size_t dtype_size(DType t) { return t == DType::f32 ? 4 : 2; }

const char* dtype_name(DType t) {
  switch (t) {
    case DType::f32: return "fp32";
    case DType::bf16: return "bf16";
    case DType::f16: return "fp16";
  }
  return "?";
}

DType dtype_from_name(const std::string& name) {
  if (name == "fp32") return DType::f32;
  if (name == "bf16") return DType::bf16;
  if (name == "fp16") return DType::f16;
  fail("unknown storage type '", name, "' (expected fp32, bf16 or fp16)");
}

const char* device_name(Device d) { return d == Device::cpu ? "cpu" : "cuda"; }

int64_t Shape::numel() const {
  int64_t n = 1;
  for (int64_t d : dims) n *= d;
  return n;
}

std::string Shape::str() const {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < dims.size(); ++i) os << (i ? ", " : "") << dims[i];
  os << ")";
  return os.str();
}

namespace {

Tensor host_zeros(const Shape& shape, DType dtype, bool threaded) {
  for (int64_t d : shape.dims) DQ_CHECK(d >= 0, "negative dimension in ", shape.str());
  const size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  // 64-byte alignment keeps oneDNN and AVX-512 loops on their fast paths.
  const size_t padded = (bytes + 63) / 64 * 64;
  void* p = padded ? std::aligned_alloc(64, padded) : nullptr;
  if (padded && !p) fail("out of host memory allocating ", bytes, " bytes for ", shape.str());
  auto* bytes_p = static_cast<unsigned char*>(p);
  const auto zero = [bytes_p](int64_t b0, int64_t b1) {
    std::memset(bytes_p + b0, 0, static_cast<size_t>(b1 - b0));
  };
  const auto n = static_cast<int64_t>(padded);
  if (threaded)
    parallel_for(n, kPointwiseGrain * static_cast<int64_t>(sizeof(float)), zero);
  else if (n > 0)
    zero(0, n);
  return Tensor::wrap(p, shape, dtype, Device::cpu,
                      std::shared_ptr<void>(p, [](void* q) { std::free(q); }));
}

}  // namespace

Tensor Tensor::zeros(const Shape& shape, DType dtype) { return host_zeros(shape, dtype, false); }

Tensor Tensor::zeros_parallel(const Shape& shape, DType dtype) {
  return host_zeros(shape, dtype, true);
}

Tensor Tensor::wrap(void* ptr, const Shape& shape, DType dtype, Device device,
                    std::shared_ptr<void> owner) {
  Tensor t;
  t.owner_ = std::move(owner);
  t.ptr_ = ptr;
  t.shape_ = shape;
  t.dtype_ = dtype;
  t.device_ = device;
  return t;
}

float* Tensor::f32() {
  DQ_CHECK(dtype_ == DType::f32 && device_ == Device::cpu, "f32() on a ", dtype_name(dtype_),
           " ", device_name(device_), " tensor");
  return static_cast<float*>(ptr_);
}

const float* Tensor::f32() const { return const_cast<Tensor*>(this)->f32(); }

Tensor Tensor::reshaped(const Shape& shape) const {
  DQ_CHECK(shape.numel() == numel(), "cannot reshape ", shape_.str(), " to ", shape.str());
  Tensor t = *this;
  t.shape_ = shape;
  return t;
}

Tensor Tensor::slice(int64_t offset, const Shape& shape) const {
  DQ_CHECK(offset >= 0 && offset + shape.numel() <= numel(), "slice [", offset, ", +",
           shape.numel(), ") outside tensor of ", numel(), " elements");
  Tensor t = *this;
  t.ptr_ = static_cast<char*>(ptr_) + static_cast<size_t>(offset) * dtype_size(dtype_);
  t.shape_ = shape;
  return t;
}

uint16_t float_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7f800000u) == 0x7f800000u && (u & 0x007fffffu)) return static_cast<uint16_t>((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

float bf16_to_float(uint16_t h) {
  uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

uint16_t float_to_f16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  uint32_t sign = (x >> 16) & 0x8000u;
  uint32_t mant = x & 0x007fffffu;
  int32_t exp = static_cast<int32_t>((x >> 23) & 0xff);
  if (exp == 0xff) return static_cast<uint16_t>(sign | 0x7c00u | (mant ? 0x200u : 0u));
  exp = exp - 127 + 15;
  if (exp >= 0x1f) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow to inf
  if (exp <= 0) {                                                   // subnormal or zero
    if (exp < -10) return static_cast<uint16_t>(sign);
    mant |= 0x00800000u;
    uint32_t shift = static_cast<uint32_t>(14 - exp);
    uint32_t half = mant >> shift;
    uint32_t rem = mant & ((1u << shift) - 1u);
    uint32_t mid = 1u << (shift - 1);
    if (rem > mid || (rem == mid && (half & 1u))) ++half;
    return static_cast<uint16_t>(sign | half);
  }
  uint32_t half = sign | (static_cast<uint32_t>(exp) << 10) | (mant >> 13);
  uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (half & 1u))) ++half;  // may carry into exponent: correct
  return static_cast<uint16_t>(half);
}

float f16_to_float(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t mant = h & 0x3ffu;
  uint32_t u;
  if (exp == 0) {
    if (mant == 0) {
      u = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400u));
      u = sign | (static_cast<uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);
  } else {
    u = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

std::vector<float> to_float_vector(const Tensor& t) {
  DQ_CHECK(t.device() == Device::cpu, "to_float_vector needs a host tensor");
  std::vector<float> out(static_cast<size_t>(t.numel()));
  const void* p = t.raw();
  for (size_t i = 0; i < out.size(); ++i) {
    switch (t.dtype()) {
      case DType::f32: out[i] = static_cast<const float*>(p)[i]; break;
      case DType::bf16: out[i] = bf16_to_float(static_cast<const uint16_t*>(p)[i]); break;
      case DType::f16: out[i] = f16_to_float(static_cast<const uint16_t*>(p)[i]); break;
    }
  }
  return out;
}

}  // namespace dq
