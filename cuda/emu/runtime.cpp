// The emulated CUDA runtime: device memory is host memory this file tracks,
// so it can refuse what a GPU refuses (or would corrupt silently):
//  - a memcpy whose kind does not match where its pointers live, or whose
//    range runs past the allocation (cudaErrorInvalidValue);
//  - a pointer into freed device memory: freed blocks stay in quarantine
//    (poisoned, up to kQuarantineBytes) so a use after free is recognised;
//  - host memory where device memory is required (memset, kernel arguments).
// New device memory is filled with 0xff bytes: NaN as float and double, so a
// kernel that reads memory nobody wrote shows NaNs. Streams run every call
// at once (in order, trivially); events record the host time.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <map>
#include <mutex>
#include <set>
#include <string>

#include "cuda/emu/internal.h"

namespace dq_emu {
namespace {

constexpr size_t kDeviceBytes = size_t{16} << 30;  // what the emulated device reports
constexpr size_t kQuarantineBytes = size_t{256} << 20;
constexpr size_t kAlign = 256;  // cudaMalloc's alignment
constexpr unsigned char kPoison = 0xff;

struct Alloc {
  size_t bytes;
  bool freed;
};

struct Registry {
  std::mutex mu;
  std::map<uintptr_t, Alloc> allocs;  // by base address, live and quarantined
  std::deque<uintptr_t> quarantine;   // freed, oldest first
  size_t live_bytes = 0, quarantined_bytes = 0;
  std::set<CUstream_st*> streams;
  std::set<CUevent_st*> events;
};
Registry& reg() {
  static Registry* r = new Registry;  // never destroyed: other statics free memory at exit
  return *r;
}

thread_local cudaError_t t_last = cudaSuccess;
thread_local std::string t_detail;
thread_local int t_device = 0;

// Where [p, p + bytes) lives; the caller holds the lock.
Where where_locked(Registry& r, uintptr_t p, size_t bytes) {
  if (p == 0) return Where::null;
  auto it = r.allocs.upper_bound(p);
  if (it == r.allocs.begin()) return Where::host;
  --it;
  const uintptr_t base = it->first, end = base + it->second.bytes;
  if (p > end || (p == end && bytes > 0 && it->second.bytes > 0)) return Where::host;
  if (it->second.freed) return Where::freed;
  return p + bytes <= end ? Where::device : Where::outside;
}

}  // namespace

void set_error(cudaError_t e, const std::string& detail) {
  t_last = e;
  t_detail = detail;
#if defined(DEEPQSM_GPU_OFF)
  const char* who = "deepqsm";
#else
  const char* who = "deepqsm emu";
#endif
  std::fprintf(stderr, "%s: %s (%s)\n", who, detail.c_str(), cudaGetErrorName(e));
}
const char* last_detail() {
  return t_detail.c_str();
}

Where where(const void* p, size_t bytes) {
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  return where_locked(r, reinterpret_cast<uintptr_t>(p), bytes);
}

const char* where_name(Where w) {
  switch (w) {
    case Where::null: return "a null pointer";
    case Where::device: return "device memory";
    case Where::freed: return "freed device memory (use after free)";
    case Where::outside: return "a range running past the end of its device allocation";
    case Where::host: return "host memory, not device memory";
  }
  return "?";
}

bool valid_stream(cudaStream_t s) {
  if (!s) return true;
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  return r.streams.count(s) > 0;
}

// DEEPQSM_GPU=off links this runtime for its types and calls, with no device.
int device_count() {
#if defined(DEEPQSM_GPU_OFF)
  return 0;
#else
  const char* env = std::getenv("DEEPQSM_EMU_DEVICES");
  return env ? std::max(0, std::atoi(env)) : 1;
#endif
}

}  // namespace dq_emu

using namespace dq_emu;

struct CUstream_st {
  unsigned flags;
};
struct CUevent_st {
  unsigned flags;
  bool recorded = false;
  std::chrono::steady_clock::time_point at;
};

namespace {
cudaError_t fail(cudaError_t e, const std::string& detail) {
  set_error(e, detail);
  return e;
}
std::string ptr_text(const void* p) {
  char b[32];
  std::snprintf(b, sizeof b, "%p", p);
  return b;
}
// A device range for a runtime call: device memory, whole.
cudaError_t need_device(const char* call, const char* role, const void* p, size_t bytes) {
  const Where w = where(p, bytes);
  if (w == Where::device) return cudaSuccess;
  return fail(cudaErrorInvalidValue, std::string(call) + ": " + role + " " + ptr_text(p) + " (" +
                                         std::to_string(bytes) + " bytes) is " + where_name(w));
}
cudaError_t need_host(const char* call, const char* role, const void* p) {
  const Where w = where(p, 0);
  if (w == Where::host) return cudaSuccess;
  return fail(cudaErrorInvalidValue, std::string(call) + ": " + role + " " + ptr_text(p) +
                                         " must be host memory, is " + where_name(w));
}
cudaError_t no_device() {
#if defined(DEEPQSM_GPU_OFF)
  return fail(cudaErrorNoDevice, "built without CUDA (DEEPQSM_GPU=off)");
#else
  return device_count() > 0 ? cudaSuccess
                            : fail(cudaErrorNoDevice, "no emulated device (DEEPQSM_EMU_DEVICES=0)");
#endif
}
}  // namespace

cudaError_t cudaGetDeviceCount(int* n) {
  *n = device_count();
  return *n > 0 ? cudaSuccess : cudaErrorNoDevice;
}
cudaError_t cudaSetDevice(int d) {
  if (d < 0 || d >= device_count())
    return fail(cudaErrorInvalidDevice, "cudaSetDevice(" + std::to_string(d) + ")");
  t_device = d;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  if (cudaError_t e = no_device()) return e;
  *d = t_device;
  return cudaSuccess;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d < 0 || d >= device_count())
    return fail(cudaErrorInvalidDevice, "cudaGetDeviceProperties(" + std::to_string(d) + ")");
  *p = cudaDeviceProp{};
  std::snprintf(p->name, sizeof p->name, "deepqsm CUDA emulator on the CPU (H100 limits)");
  p->totalGlobalMem = kDeviceBytes;
  p->sharedMemPerBlock = 48 * 1024;
  p->sharedMemPerBlockOptin = kMaxSharedBytes;
  p->regsPerBlock = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = kMaxThreads;
  p->maxThreadsDim[0] = 1024, p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = 2147483647, p->maxGridSize[1] = 65535, p->maxGridSize[2] = 65535;
  p->major = 9, p->minor = 0;
  p->multiProcessorCount = 132;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 0;  // no driver
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;  // the emulator, not a CUDA runtime
  return cudaSuccess;
}
cudaError_t cudaMemGetInfo(size_t* free, size_t* total) {
  if (cudaError_t e = no_device()) return e;
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  *total = kDeviceBytes;
  *free = kDeviceBytes - std::min(kDeviceBytes, r.live_bytes);
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  return no_device();
}
cudaError_t cudaGetLastError() {
  const cudaError_t e = t_last;
  t_last = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() {
  return t_last;
}

const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevicePointer: return "cudaErrorInvalidDevicePointer";
    case cudaErrorInvalidMemcpyDirection: return "cudaErrorInvalidMemcpyDirection";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorIllegalAddress: return "cudaErrorIllegalAddress";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorLaunchFailure: return "cudaErrorLaunchFailure";
  }
  return "cudaErrorUnknown";
}
const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevicePointer: return "invalid device pointer";
    case cudaErrorInvalidMemcpyDirection: return "invalid copy direction for memcpy";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorIllegalAddress: return "an illegal memory access was encountered";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

cudaError_t cudaMalloc(void** p, size_t bytes) {
  if (cudaError_t e = no_device()) return e;
  *p = nullptr;
  if (bytes == 0) return cudaSuccess;
  Registry& r = reg();
  const size_t rounded = (bytes + kAlign - 1) / kAlign * kAlign;
  {
    std::lock_guard<std::mutex> lock(r.mu);
    if (r.live_bytes + rounded > kDeviceBytes)
      return fail(cudaErrorMemoryAllocation,
                  "cudaMalloc(" + std::to_string(bytes) + "): the emulated device has " +
                      std::to_string(kDeviceBytes - r.live_bytes) + " bytes free");
  }
  void* m = std::aligned_alloc(kAlign, rounded);
  if (!m) return fail(cudaErrorMemoryAllocation, "cudaMalloc(" + std::to_string(bytes) + ")");
  std::memset(m, kPoison, rounded);
  std::lock_guard<std::mutex> lock(r.mu);
  r.allocs[reinterpret_cast<uintptr_t>(m)] = Alloc{bytes, false};
  r.live_bytes += rounded;
  *p = m;
  return cudaSuccess;
}

cudaError_t cudaFree(void* p) {
  if (!p) return cudaSuccess;
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.allocs.find(reinterpret_cast<uintptr_t>(p));
  if (it == r.allocs.end() || it->second.freed)
    return fail(cudaErrorInvalidValue,
                "cudaFree(" + ptr_text(p) + "): " +
                    (it == r.allocs.end() ? "not the start of a device allocation"
                                          : "already freed (double free)"));
  const size_t rounded = (it->second.bytes + kAlign - 1) / kAlign * kAlign;
  std::memset(p, kPoison, rounded);
  it->second.freed = true;
  r.live_bytes -= rounded;
  r.quarantined_bytes += rounded;
  r.quarantine.push_back(it->first);
  while (r.quarantined_bytes > kQuarantineBytes && !r.quarantine.empty()) {
    auto old = r.allocs.find(r.quarantine.front());
    r.quarantine.pop_front();
    r.quarantined_bytes -= (old->second.bytes + kAlign - 1) / kAlign * kAlign;
    std::free(reinterpret_cast<void*>(old->first));
    r.allocs.erase(old);
  }
  return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                            cudaStream_t s) {
  if (cudaError_t e = no_device()) return e;
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle, "cudaMemcpy: unknown stream");
  if (bytes == 0) return cudaSuccess;
  if (kind == cudaMemcpyDefault) {
    const bool dd = where(dst, 0) != Where::host, sd = where(src, 0) != Where::host;
    kind = dd ? (sd ? cudaMemcpyDeviceToDevice : cudaMemcpyHostToDevice)
              : (sd ? cudaMemcpyDeviceToHost : cudaMemcpyHostToHost);
  }
  const bool dst_dev = kind == cudaMemcpyHostToDevice || kind == cudaMemcpyDeviceToDevice;
  const bool src_dev = kind == cudaMemcpyDeviceToHost || kind == cudaMemcpyDeviceToDevice;
  if (kind < cudaMemcpyHostToHost || kind > cudaMemcpyDefault)
    return fail(cudaErrorInvalidMemcpyDirection, "cudaMemcpy: kind " + std::to_string(kind));
  cudaError_t e = dst_dev ? need_device("cudaMemcpy", "destination", dst, bytes)
                          : need_host("cudaMemcpy", "destination", dst);
  if (e) return e;
  e = src_dev ? need_device("cudaMemcpy", "source", src, bytes)
              : need_host("cudaMemcpy", "source", src);
  if (e) return e;
  std::memmove(dst, src, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemcpy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind) {
  return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t s) {
  if (cudaError_t e = no_device()) return e;
  if (!valid_stream(s)) return fail(cudaErrorInvalidResourceHandle, "cudaMemset: unknown stream");
  if (bytes == 0) return cudaSuccess;
  if (cudaError_t e = need_device("cudaMemset", "destination", p, bytes)) return e;
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMemset(void* p, int value, size_t bytes) {
  return cudaMemsetAsync(p, value, bytes, nullptr);
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  if (cudaError_t e = no_device()) return e;
  *s = new CUstream_st{flags};
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  r.streams.insert(*s);
  return cudaSuccess;
}
cudaError_t cudaStreamCreate(cudaStream_t* s) {
  return cudaStreamCreateWithFlags(s, 0);
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  if (!s || !r.streams.erase(s))
    return fail(cudaErrorInvalidResourceHandle, "cudaStreamDestroy: unknown stream");
  delete s;
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  return valid_stream(s)
             ? cudaSuccess
             : fail(cudaErrorInvalidResourceHandle, "cudaStreamSynchronize: unknown stream");
}
cudaError_t cudaStreamQuery(cudaStream_t s) {
  return cudaStreamSynchronize(s);
}

namespace {
bool valid_event(cudaEvent_t e) {
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  return e && r.events.count(e) > 0;
}
}  // namespace
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  if (!valid_stream(s) || !valid_event(e))
    return fail(cudaErrorInvalidResourceHandle, "cudaStreamWaitEvent: unknown stream or event");
  return cudaSuccess;  // every earlier call has run already
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned flags) {
  if (cudaError_t err = no_device()) return err;
  *e = new CUevent_st{flags, false, {}};
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  r.events.insert(*e);
  return cudaSuccess;
}
cudaError_t cudaEventCreate(cudaEvent_t* e) {
  return cudaEventCreateWithFlags(e, 0);
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  Registry& r = reg();
  std::lock_guard<std::mutex> lock(r.mu);
  if (!e || !r.events.erase(e))
    return fail(cudaErrorInvalidResourceHandle, "cudaEventDestroy: unknown event");
  delete e;
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!valid_stream(s) || !valid_event(e))
    return fail(cudaErrorInvalidResourceHandle, "cudaEventRecord: unknown stream or event");
  e->recorded = true;
  e->at = std::chrono::steady_clock::now();
  return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  return valid_event(e)
             ? cudaSuccess
             : fail(cudaErrorInvalidResourceHandle, "cudaEventSynchronize: unknown event");
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
  return cudaEventSynchronize(e);
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  if (!valid_event(a) || !valid_event(b) || !a->recorded || !b->recorded ||
      ((a->flags | b->flags) & cudaEventDisableTiming))
    return fail(cudaErrorInvalidResourceHandle,
                "cudaEventElapsedTime: events not recorded or created without timing");
  *ms = std::chrono::duration<float, std::milli>(b->at - a->at).count();
  return cudaSuccess;
}
