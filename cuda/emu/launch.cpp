// Kernel launches on the CPU: a grid block by block, a block's threads as
// fibers (ucontext) on the calling OS thread, __syncthreads a real barrier
// across them (see include/dq_emu.h for the rules and the plain-call fast
// path), and the record of which kernels were launched.
#include <ucontext.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "cuda/emu/internal.h"

// Under AddressSanitizer the fiber switches are announced, so it tracks
// which stack is live (scripts/test-emu-sanitize.sh).
#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define DQ_EMU_ASAN 1
#else
#define DQ_EMU_ASAN 0
#endif

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace dq_emu {
namespace {

constexpr size_t kStackBytes = (DQ_EMU_ASAN ? 256 : 64) * 1024;

// The launch record: kernel name -> launches, and per launch site whether
// its threads ever reached a barrier.
struct Record {
  std::mutex mu;
  std::map<std::string, long> launches;
  std::map<std::string, bool> uses_barrier;
  ~Record() {
    const char* path = std::getenv("DEEPQSM_EMU_LAUNCH_LOG");
    if (!path || launches.empty()) return;
    std::string text;
    for (const auto& [name, n] : launches) text += name + "\n";
    // One append per process, so parallel test processes do not interleave lines.
    if (FILE* f = std::fopen(path, "a")) {
      std::fwrite(text.data(), 1, text.size(), f);
      std::fclose(f);
    }
  }
};
Record& record() {
  static Record r;
  return r;
}

// "(ns::foo<A, B>)" -> "foo": the name the source's __global__ declares.
std::string base_name(const char* kernel) {
  std::string s(kernel);
  s.erase(
      std::remove_if(s.begin(), s.end(), [](char c) { return c == '(' || c == ')' || c == ' '; }),
      s.end());
  s = s.substr(0, s.find('<'));
  const size_t colon = s.rfind("::");
  return colon == std::string::npos ? s : s.substr(colon + 2);
}

enum class Order { normal, reverse, shuffle };
Order block_order() {
  const char* env = std::getenv("DEEPQSM_EMU_BLOCK_ORDER");
  const std::string v = env ? env : "normal";
  if (v == "reverse") return Order::reverse;
  if (v == "shuffle") return Order::shuffle;
  if (v != "normal" && v != "") {
    std::fprintf(stderr,
                 "deepqsm emu: DEEPQSM_EMU_BLOCK_ORDER=%s is not normal, reverse or "
                 "shuffle\n",
                 v.c_str());
    std::exit(2);
  }
  return Order::normal;
}

// One block's threads as fibers.
struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  const char* barrier_file = nullptr;  // null: running or done
  int barrier_line = 0;
  bool done = false;
};
struct Block {
  ucontext_t home;
  std::vector<Fiber> fibers;  // reused from block to block
  int current = -1;           // the fiber running, -1 in plain mode
  void (*thread)(void*) = nullptr;
  void* ctx = nullptr;
  std::string error;  // set by a fiber that threw
  const void* home_bottom = nullptr;  // the scheduler's stack, for AddressSanitizer
  size_t home_size = 0;
};
thread_local Block* t_block = nullptr;
thread_local bool t_plain = false;  // running threads as plain calls
thread_local bool t_barrier_hit = false;
thread_local std::string t_plain_barrier;  // a barrier reached in plain mode

void fiber_main() {
  Block& b = *t_block;
#if DQ_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &b.home_bottom, &b.home_size);
#endif
  try {
    b.thread(b.ctx);
  } catch (const std::exception& e) {
    b.error = e.what();
  } catch (...) {
    b.error = "an exception";
  }
  b.fibers[b.current].done = true;
#if DQ_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, b.home_bottom, b.home_size);  // this fiber ends
#endif
  // uc_link returns to b.home.
}

uint3 thread_coords(unsigned i, const dim3& d) {
  return uint3{i % d.x, (i / d.x) % d.y, i / (d.x * d.y)};
}

struct LaunchFailure {
  std::string what;
};

void run_block_fibers(Block& b, unsigned threads, const dim3& block) {
  if (b.fibers.size() < threads) b.fibers.resize(threads);
  for (unsigned i = 0; i < threads; ++i) {
    Fiber& f = b.fibers[i];
    if (!f.stack) f.stack.reset(new char[kStackBytes]);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &b.home;
    makecontext(&f.ctx, fiber_main, 0);
    f.done = false;
    f.barrier_file = nullptr;
  }
  for (;;) {
    for (unsigned i = 0; i < threads; ++i) {
      Fiber& f = b.fibers[i];
      if (f.done) continue;
      f.barrier_file = nullptr;
      threadIdx = thread_coords(i, block);
      b.current = static_cast<int>(i);
#if DQ_EMU_ASAN
      void* fake = nullptr;
      __sanitizer_start_switch_fiber(&fake, f.stack.get(), kStackBytes);
#endif
      swapcontext(&b.home, &f.ctx);
#if DQ_EMU_ASAN
      __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#endif
      if (!b.error.empty())
        throw LaunchFailure{"thread " + std::to_string(i) + " threw: " + b.error};
    }
    b.current = -1;
    // Every thread is now done or waiting at a barrier.
    int done = 0, waiting = -1;
    for (unsigned i = 0; i < threads; ++i) {
      const Fiber& f = b.fibers[i];
      if (f.done) {
        ++done;
        continue;
      }
      if (waiting < 0) {
        waiting = static_cast<int>(i);
        continue;
      }
      const Fiber& w = b.fibers[waiting];
      if (f.barrier_line != w.barrier_line || std::string(f.barrier_file) != w.barrier_file)
        throw LaunchFailure{"threads of one block wait at different barriers: thread " +
                            std::to_string(waiting) + " at __syncthreads " + w.barrier_file + ":" +
                            std::to_string(w.barrier_line) + ", thread " + std::to_string(i) +
                            " at " + f.barrier_file + ":" + std::to_string(f.barrier_line)};
    }
    if (done == static_cast<int>(threads)) return;
    if (done > 0) {
      const Fiber& w = b.fibers[waiting];
      throw LaunchFailure{std::to_string(done) + " of " + std::to_string(threads) +
                          " threads of one block exited while thread " + std::to_string(waiting) +
                          " waits at __syncthreads " + w.barrier_file + ":" +
                          std::to_string(w.barrier_line)};
    }
  }
}

}  // namespace

void syncthreads(const char* file, int line) {
  t_barrier_hit = true;
  if (t_plain || !t_block || t_block->current < 0) {
    // A block run as plain calls (its kernel reached no barrier in the first
    // block), or a barrier outside any kernel: cannot wait, so report it.
    if (t_plain_barrier.empty()) t_plain_barrier = std::string(file) + ":" + std::to_string(line);
    return;
  }
  Block& b = *t_block;
  Fiber& f = b.fibers[b.current];
  f.barrier_file = file;
  f.barrier_line = line;
#if DQ_EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, b.home_bottom, b.home_size);
#endif
  swapcontext(&f.ctx, &b.home);
#if DQ_EMU_ASAN
  __sanitizer_finish_switch_fiber(fake, &b.home_bottom, &b.home_size);
#endif
}

bool check_config(const LaunchConfig& c) {
  const dim3 &g = c.grid, &k = c.block;
  const unsigned long long threads = 1ull * k.x * k.y * k.z;
  std::string why;
  cudaError_t e = cudaErrorInvalidConfiguration;
  if (threads == 0 || g.x == 0 || g.y == 0 || g.z == 0)
    why = "an empty grid or block";
  else if (threads > static_cast<unsigned long long>(kMaxThreads) || k.x > 1024 || k.y > 1024 ||
           k.z > 64)
    why = std::to_string(threads) + " threads per block (at most 1024; 1024 x 1024 x 64)";
  else if (g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    why = "grid beyond 2^31-1 x 65535 x 65535";
  else if (c.shmem > kMaxSharedBytes)
    why = std::to_string(c.shmem) + " bytes of dynamic shared memory per block (at most " +
          std::to_string(kMaxSharedBytes) + ")",
    e = cudaErrorInvalidValue;
  else if (device_count() == 0)
    why = "no device", e = cudaErrorNoDevice;
  else if (!valid_stream(c.stream))
    why = "unknown stream", e = cudaErrorInvalidResourceHandle;
  if (why.empty()) return true;
  set_error(e, std::string("launch of ") + c.kernel + " at " + c.file + ":" +
                   std::to_string(c.line) + ": " + why);
  return false;
}

bool check_pointer_arg(const LaunchConfig& c, int index, const void* p) {
  const Where w = where(p, 0);
  if (w == Where::null || w == Where::device) return true;
  set_error(cudaErrorIllegalAddress, std::string("launch of ") + c.kernel + " at " + c.file + ":" +
                                         std::to_string(c.line) + ": argument " +
                                         std::to_string(index) + " points to " + where_name(w));
  return false;
}

long launches(const char* kernel) {
  Record& r = record();
  std::lock_guard<std::mutex> lock(r.mu);
  auto it = r.launches.find(kernel);
  return it == r.launches.end() ? 0 : it->second;
}

void run_grid(const LaunchConfig& c, void (*thread)(void*), void* ctx) {
  static const Order order = block_order();
  const std::string site = std::string(c.kernel) + "@" + c.file + ":" + std::to_string(c.line);
  bool barrier;  // whether every block runs on fibers
  {
    Record& r = record();
    std::lock_guard<std::mutex> lock(r.mu);
    ++r.launches[base_name(c.kernel)];
    auto it = r.uses_barrier.find(site);
    barrier = it != r.uses_barrier.end() && it->second;
  }
  const unsigned long long nblocks = 1ull * c.grid.x * c.grid.y * c.grid.z;
  std::vector<unsigned long long> ids(nblocks);
  std::iota(ids.begin(), ids.end(), 0ull);
  if (order == Order::reverse) std::reverse(ids.begin(), ids.end());
  if (order == Order::shuffle) {
    static thread_local std::mt19937_64 rng(20261207);
    std::shuffle(ids.begin(), ids.end(), rng);
  }
  const unsigned threads = c.block.x * c.block.y * c.block.z;
  thread_local Block block;
  Block* outer = t_block;  // restored after; launches from a kernel are not emulated
  t_block = &block;
  block.thread = thread;
  block.ctx = ctx;
  block.error.clear();
  gridDim = c.grid;
  blockDim = c.block;
  t_barrier_hit = false;
  t_plain_barrier.clear();
  std::string failure;
  try {
    for (unsigned long long n = 0; n < nblocks; ++n) {
      const unsigned long long id = ids[n];
      blockIdx = uint3{static_cast<unsigned>(id % c.grid.x),
                       static_cast<unsigned>((id / c.grid.x) % c.grid.y),
                       static_cast<unsigned>(id / (1ull * c.grid.x * c.grid.y))};
      const bool fibers = n == 0 || barrier;
      if (fibers) {
        t_plain = false;
        run_block_fibers(block, threads, c.block);
        if (n == 0) barrier = barrier || t_barrier_hit;
      } else {
        t_plain = true;
        for (unsigned i = 0; i < threads; ++i) {
          threadIdx = thread_coords(i, c.block);
          thread(ctx);
        }
        t_plain = false;
        if (!t_plain_barrier.empty())
          throw LaunchFailure{"a thread reached __syncthreads " + t_plain_barrier +
                              " in a block run without fibers (the kernel's first block "
                              "reached none); barriers that depend on the block are not "
                              "emulated"};
      }
    }
  } catch (const LaunchFailure& f) {
    failure = f.what;
  } catch (const std::exception& e) {
    failure = std::string("a thread threw: ") + e.what();
  }
  t_plain = false;
  t_block = outer;
  {
    Record& r = record();
    std::lock_guard<std::mutex> lock(r.mu);
    r.uses_barrier[site] = barrier || t_barrier_hit;
  }
  if (!failure.empty())
    set_error(cudaErrorLaunchFailure,
              std::string("kernel ") + c.kernel + " launched at " + c.file + ":" +
                  std::to_string(c.line) + ", block (" + std::to_string(blockIdx.x) + "," +
                  std::to_string(blockIdx.y) + "," + std::to_string(blockIdx.z) + "): " + failure);
}

}  // namespace dq_emu
