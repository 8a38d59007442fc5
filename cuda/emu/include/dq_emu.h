// deepqsm's CUDA emulator (DEEPQSM_GPU=emu): the part of CUDA's execution
// model, runtime and half types the project uses, on the CPU, so the same
// .cu sources compiled by the host compiler run in CI without a GPU.
//
// Kernels: DQ_LAUNCH (cuda/launch.h) runs a grid block by block (in order,
// reversed or shuffled: DEEPQSM_EMU_BLOCK_ORDER=normal|reverse|shuffle); the
// threads of a block are fibers on one OS thread, so __syncthreads is a real
// barrier and __shared__ (a function-local static per OS thread) is shared
// by exactly the threads of the running block. The first block of every
// launch runs on fibers; a kernel none of whose threads reached a barrier
// there runs its other blocks as plain calls (much faster), and a barrier
// reached in such a block is reported, never silently skipped.
//
// Memory: device allocations are host memory the emulator tracks; see
// runtime.cpp for what it refuses. Streams execute every call at once, which
// is an order the real device may also choose (in order per stream).
//
// Nothing here needs a CUDA toolkit; the headers cuda_runtime.h, cuda_fp16.h,
// cuda_bf16.h and cufft.h beside this one forward here.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ------------------------------------------------------------ qualifiers
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// Function-local and per OS thread: the threads of a block are fibers on one
// OS thread and blocks run one after another, so this is per-block memory.
#define __shared__ static thread_local
#define __syncthreads() ::dq_emu::syncthreads(__FILE__, __LINE__)

// CUDA's math library has these in the global namespace.
using std::isfinite;
using std::isinf;
using std::isnan;
// CUDA's integer min and max (its float ones are fminf and fmaxf).
inline int min(int a, int b) { return b < a ? b : a; }
inline int max(int a, int b) { return a < b ? b : a; }
inline long long min(long long a, long long b) { return b < a ? b : a; }
inline long long max(long long a, long long b) { return a < b ? b : a; }
inline unsigned min(unsigned a, unsigned b) { return b < a ? b : a; }
inline unsigned max(unsigned a, unsigned b) { return a < b ? b : a; }

// ------------------------------------------------------------ vector types
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct uint3 {
  unsigned x, y, z;
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
inline float2 make_float2(float x, float y) {
  return {x, y};
}
inline float4 make_float4(float x, float y, float z, float w) {
  return {x, y, z, w};
}
inline double2 make_double2(double x, double y) {
  return {x, y};
}

extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;
constexpr int warpSize = 32;

// ------------------------------------------------ rounding-explicit intrinsics
// One IEEE operation each, never contracted into an FMA (the project builds
// with -ffp-contract=off; volatile keeps it so in any translation unit).
inline float __fadd_rn(float a, float b) {
  volatile float r = a + b;
  return r;
}
inline float __fsub_rn(float a, float b) {
  volatile float r = a - b;
  return r;
}
inline float __fmul_rn(float a, float b) {
  volatile float r = a * b;
  return r;
}
inline float __fdiv_rn(float a, float b) {
  volatile float r = a / b;
  return r;
}
inline double __dadd_rn(double a, double b) {
  volatile double r = a + b;
  return r;
}
inline double __dsub_rn(double a, double b) {
  volatile double r = a - b;
  return r;
}
inline double __dmul_rn(double a, double b) {
  volatile double r = a * b;
  return r;
}
float __fsqrt_rn(float a);
float __fmaf_rn(float a, float b, float c);

// ------------------------------------------------------------ half types
// CUDA's host conversions: round to nearest even, NaN to the canonical
// 0x7fff, overflow to infinity.
struct __half {
  uint16_t __x;
};
struct __nv_bfloat16 {
  uint16_t __x;
};
using half = __half;
using nv_bfloat16 = __nv_bfloat16;
__half __float2half_rn(float f);
float __half2float(__half h);
__nv_bfloat16 __float2bfloat16_rn(float f);
float __bfloat162float(__nv_bfloat16 h);
inline __half __float2half(float f) {
  return __float2half_rn(f);
}
inline __nv_bfloat16 __float2bfloat16(float f) {
  return __float2bfloat16_rn(f);
}

// ------------------------------------------------------------ runtime types
// Values and names as CUDA's (driver_types.h).
enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInitializationError = 3,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorInvalidDevicePointer = 17,
  cudaErrorInvalidMemcpyDirection = 21,
  cudaErrorInvalidDeviceFunction = 98,
  cudaErrorNoDevice = 100,
  cudaErrorInvalidDevice = 101,
  cudaErrorInvalidResourceHandle = 400,
  cudaErrorNotReady = 600,
  cudaErrorIllegalAddress = 700,
  cudaErrorLaunchOutOfResources = 701,
  cudaErrorLaunchFailure = 719,
};
using cudaError = cudaError_t;
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
struct CUstream_st;
struct CUevent_st;
using cudaStream_t = CUstream_st*;
using cudaEvent_t = CUevent_st*;
constexpr unsigned cudaStreamDefault = 0, cudaStreamNonBlocking = 1;
constexpr unsigned cudaEventDefault = 0, cudaEventBlockingSync = 1, cudaEventDisableTiming = 2;

struct cudaDeviceProp {
  char name[256];
  size_t totalGlobalMem;
  size_t sharedMemPerBlock;
  size_t sharedMemPerBlockOptin;
  int regsPerBlock;
  int warpSize;
  int maxThreadsPerBlock;
  int maxThreadsDim[3];
  int maxGridSize[3];
  int major;
  int minor;
  int multiProcessorCount;
};

cudaError_t cudaGetDeviceCount(int* n);
cudaError_t cudaSetDevice(int d);
cudaError_t cudaGetDevice(int* d);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d);
cudaError_t cudaDriverGetVersion(int* v);
cudaError_t cudaRuntimeGetVersion(int* v);
cudaError_t cudaMemGetInfo(size_t* free, size_t* total);
cudaError_t cudaDeviceSynchronize();
cudaError_t cudaGetLastError();
cudaError_t cudaPeekAtLastError();
const char* cudaGetErrorString(cudaError_t e);
const char* cudaGetErrorName(cudaError_t e);

cudaError_t cudaMalloc(void** p, size_t bytes);
template <class T>
cudaError_t cudaMalloc(T** p, size_t bytes) {
  return cudaMalloc(reinterpret_cast<void**>(p), bytes);
}
cudaError_t cudaFree(void* p);
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s = nullptr);
cudaError_t cudaMemset(void* p, int value, size_t bytes);
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s = nullptr);

cudaError_t cudaStreamCreate(cudaStream_t* s);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaStreamQuery(cudaStream_t s);
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned flags = 0);
cudaError_t cudaEventCreate(cudaEvent_t* e);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = nullptr);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventQuery(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t start, cudaEvent_t end);

// ------------------------------------------------------------ the emulator
namespace dq_emu {

// Where a pointer lives, for the checks (runtime.cpp).
enum class Where { null, device, outside, freed, host };
Where where(const void* p, size_t bytes = 1);

// The device-side barrier (__syncthreads); file and line name the barrier so
// threads waiting at different ones are reported.
void syncthreads(const char* file, int line);

struct LaunchConfig {
  const char* kernel;  // as written at the launch, template arguments and all
  const char* file;
  int line;
  dim3 grid, block;
  size_t shmem;
  cudaStream_t stream;
};
// Checks the configuration and one pointer argument at a time; false stops
// the launch (the error is then cudaGetLastError's).
bool check_config(const LaunchConfig& c);
bool check_pointer_arg(const LaunchConfig& c, int index, const void* p);
// Runs thread(ctx) for every thread of the grid with threadIdx & co. set.
void run_grid(const LaunchConfig& c, void (*thread)(void*), void* ctx);
// The detail of the last error the emulator reported (for tests and logs).
const char* last_detail();
// How many times a kernel (its name without template arguments) has been
// launched in this process.
long launches(const char* kernel);

template <class F, class Tuple, size_t... I>
bool check_pointers(const LaunchConfig& c, const Tuple& t, std::index_sequence<I...>) {
  bool ok = true;
  auto one = [&](int i, const auto& v) {
    using V = std::decay_t<decltype(v)>;
    if constexpr (std::is_pointer_v<V>)
      if (ok) ok = check_pointer_arg(c, i, static_cast<const void*>(v));
  };
  (one(static_cast<int>(I), std::get<I>(t)), ...);
  return ok;
}

template <class F>
struct Launch {
  LaunchConfig c;
  F f;
  template <class... A>
  void operator()(A&&... a) {
    // Kernel parameters are copies; every thread gets its own.
    using Args = std::tuple<std::decay_t<A>...>;
    struct Ctx {
      F* f;
      const Args* args;
    };
    Args args(std::forward<A>(a)...);
    if (!check_config(c)) return;
    if (!check_pointers<F>(c, args, std::index_sequence_for<A...>{})) return;
    Ctx ctx{&f, &args};
    run_grid(
        c,
        [](void* p) {
          Ctx* x = static_cast<Ctx*>(p);
          Args mine = *x->args;
          std::apply(*x->f, mine);
        },
        &ctx);
  }
};
template <class F>
Launch<F> launch(const char* kernel, const char* file, int line, dim3 grid, dim3 block,
                 size_t shmem, cudaStream_t stream, F f) {
  return Launch<F>{LaunchConfig{kernel, file, line, grid, block, shmem, stream}, f};
}

}  // namespace dq_emu
