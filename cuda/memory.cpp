#include "cuda/memory.h"

#include <utility>

#include "cuda/check.h"

namespace dq {

DeviceBuffer::DeviceBuffer(size_t bytes) : bytes_(bytes) {
  if (bytes == 0) return;
  cudaError_t e = cudaMalloc(&ptr_, bytes);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear it so the next unrelated check does not report it again
    // Only cudaErrorMemoryAllocation means the memory ran out; a missing
    // device, a driver too old for the runtime, or an earlier kernel's
    // sticky fault surface here too, and need another remedy.
    if (e == cudaErrorMemoryAllocation)
      fail_device("out of GPU memory allocating ", bytes / (1024 * 1024), " MiB (", bytes,
           " bytes): ", cudaGetErrorString(e), "; reduce the batch or patch size");
    fail_device("cudaMalloc of ", bytes, " bytes failed: ", cudaGetErrorName(e), " (",
         cudaGetErrorString(e), ")");
  }
}

DeviceBuffer::~DeviceBuffer() {
  // A destructor cannot throw; cudaFree fails only when the context is
  // already gone (process exit) or after an earlier sticky error, which
  // has been reported where it happened.
  if (ptr_) cudaFree(ptr_);
}

DeviceBuffer::DeviceBuffer(DeviceBuffer&& o) noexcept
    : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_) cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

Arena::Arena(size_t capacity_bytes) : buffer_(std::make_shared<DeviceBuffer>(capacity_bytes)) {}

void* Arena::allocate(size_t bytes) {
  size_t start = (used_ + kAlignment - 1) / kAlignment * kAlignment;
  if (start > capacity() || bytes > capacity() - start)
    fail("GPU arena of ", capacity(), " bytes is full: ", used_, " bytes used, ", bytes,
         " more requested; the arena is sized too small for this model and batch");
  used_ = start + bytes;
  if (used_ > peak_) peak_ = used_;
  return static_cast<char*>(buffer_->data()) + start;
}

Tensor Arena::tensor(const Shape& shape, DType dtype) {
  size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  return Tensor::wrap(allocate(bytes), shape, dtype, Device::cuda, buffer_);
}

Tensor cuda_zeros(const Shape& shape, DType dtype, cudaStream_t stream) {
  for (int64_t d : shape.dims) DQ_CHECK(d >= 0, "negative dimension in ", shape.str());
  size_t bytes = static_cast<size_t>(shape.numel()) * dtype_size(dtype);
  auto buffer = std::make_shared<DeviceBuffer>(bytes);
  if (bytes) DQ_CUDA(cudaMemsetAsync(buffer->data(), 0, bytes, stream));
  return Tensor::wrap(buffer->data(), shape, dtype, Device::cuda, buffer);
}

namespace {

void check_pair(const Tensor& src, Device src_dev, const Tensor& dst, Device dst_dev) {
  DQ_CHECK(src.device() == src_dev && dst.device() == dst_dev, "copy from a ",
           device_name(src.device()), " tensor to a ", device_name(dst.device()),
           " tensor, expected ", device_name(src_dev), " to ", device_name(dst_dev));
  DQ_CHECK(src.shape() == dst.shape() && src.dtype() == dst.dtype(), "copy from ",
           src.shape().str(), " ", dtype_name(src.dtype()), " to ", dst.shape().str(), " ",
           dtype_name(dst.dtype()));
}

void copy_sync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
  if (bytes == 0) return;
  DQ_CUDA(cudaMemcpyAsync(dst, src, bytes, kind, stream));
  DQ_CUDA(cudaStreamSynchronize(stream));
}

}  // namespace

void copy_to_device(const Tensor& host, Tensor& device, cudaStream_t stream) {
  check_pair(host, Device::cpu, device, Device::cuda);
  copy_sync(device.raw(), host.raw(), host.nbytes(), cudaMemcpyHostToDevice, stream);
}

void copy_to_host(const Tensor& device, Tensor& host, cudaStream_t stream) {
  check_pair(device, Device::cuda, host, Device::cpu);
  copy_sync(host.raw(), device.raw(), device.nbytes(), cudaMemcpyDeviceToHost, stream);
}

Tensor to_device(const Tensor& host, cudaStream_t stream) {
  size_t bytes = host.nbytes();
  auto buffer = std::make_shared<DeviceBuffer>(bytes);
  Tensor device = Tensor::wrap(buffer->data(), host.shape(), host.dtype(), Device::cuda, buffer);
  copy_to_device(host, device, stream);
  return device;
}

Tensor to_host(const Tensor& device, cudaStream_t stream) {
  Tensor host = Tensor::zeros(device.shape(), device.dtype());
  copy_to_host(device, host, stream);
  return host;
}

}  // namespace dq
