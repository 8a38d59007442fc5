// Training-step and inference timings of the DeepQSM U-Net on one backend.
//
//   deepqsm_bench_unet train [--depth 5 --base 16 --patch 64 --batch 40 --repeats 5]
//   deepqsm_bench_unet infer [--size 160,160,160 --repeats 5]
//   ... --device gpu [--precision fp32|tf32|bf16|fp16]
//
// Prints one human line and one JSON line per measurement: the median of
// the repeats after one warm-up (plans, autotuning, first-touch memory) of a
// complete step (forward, loss, backward, Adam) or one forward pass. On the
// CPU the time is wall clock and the threads are printed (oneDNN's
// OMP_NUM_THREADS and the element-wise loops' hardware concurrency); on a
// GPU it is CUDA events around the work on the backend's stream (GPU compute
// only, no transfers), and peak device memory is the pool's high-water mark.
// The achieved rate is counted from the architecture (UNet::forward_flops; a
// training step costs ~3x a forward).
#include <CLI/CLI.hpp>
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "benchmarks/timing.h"
#include "core/error.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/unet.h"
#include "cuda/check.h"
#include "cuda/nn/cuda_backend.h"

using namespace dq;

namespace {

using bench::median;

// Peak resident memory of this process (VmHWM), in MiB.
double peak_rss_mib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::stod(line.substr(6)) / 1024.0;
  return 0;
}

std::string threads() {
  const char* omp = std::getenv("OMP_NUM_THREADS");
  return std::string(omp ? omp : "all") + " oneDNN / " +
         std::to_string(std::thread::hardware_concurrency()) + " hardware";
}

// Seconds per call of f, one per repeat, after a warm-up call. With a
// stream, CUDA events on it time the device work; otherwise wall clock.
template <class F>
std::vector<double> time_repeats(int repeats, cudaStream_t stream, bool gpu, F f) {
  f();
  std::vector<double> t;
  for (int i = 0; i < repeats; ++i) {
    if (gpu) {
      cudaEvent_t a, b;
      DQ_CUDA(cudaEventCreate(&a));
      DQ_CUDA(cudaEventCreate(&b));
      DQ_CUDA(cudaEventRecord(a, stream));
      f();
      DQ_CUDA(cudaEventRecord(b, stream));
      DQ_CUDA(cudaEventSynchronize(b));
      float ms = 0;
      DQ_CUDA(cudaEventElapsedTime(&ms, a, b));
      DQ_CUDA(cudaEventDestroy(a));
      DQ_CUDA(cudaEventDestroy(b));
      t.push_back(ms / 1e3);
    } else {
      auto s = std::chrono::steady_clock::now();
      f();
      t.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - s).count());
    }
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Times DeepQSM U-Net training steps and inference on the CPU or CUDA backend."};
  app.require_subcommand(1);
  UNetConfig cfg;
  int repeats = 5;
  int64_t patch = 64, batch = 40;
  std::vector<int64_t> size{160, 160, 160};
  std::string device = "cpu", precision = "fp32";
  for (CLI::App* sub : {app.add_subcommand("train", "time training steps (batch of cubic patches)"),
                        app.add_subcommand("infer", "time one forward pass over a volume")}) {
    sub->add_option("--depth", cfg.depth, "U-Net levels")->capture_default_str();
    sub->add_option("--base", cfg.base_filters, "filters at full resolution")
        ->capture_default_str();
    sub->add_option("--repeats", repeats, "timed repeats after one warm-up")->capture_default_str();
    sub->add_option("--device", device, "cpu or gpu")
        ->check(CLI::IsMember({"cpu", "gpu"}))
        ->capture_default_str();
    sub->add_option("--precision", precision, "GPU convolutions: fp32, tf32, bf16 or fp16")
        ->check(CLI::IsMember({"fp32", "tf32", "bf16", "fp16"}))
        ->capture_default_str();
  }
  CLI::App* train = app.get_subcommand("train");
  train->add_option("--patch", patch, "patch side, voxels")->capture_default_str();
  train->add_option("--batch", batch, "patches per step")->capture_default_str();
  CLI::App* infer = app.get_subcommand("infer");
  infer->add_option("--size", size, "volume D,H,W in voxels (sides multiples of 16)")
      ->delimiter(',')
      ->expected(3);
  CLI11_PARSE(app, argc, argv);

  try {
    const bool gpu = device == "gpu";
    CudaBackendOptions co;
    co.precision = precision;
    auto be = gpu ? make_cuda_backend(co) : make_cpu_backend();
    cudaStream_t stream = gpu ? cuda_stream(*be) : nullptr;
    // Peak memory: the device pool's high-water mark, or the process's RSS.
    auto peak_mib = [&] {
      return gpu ? static_cast<double>(cuda_pool_stats(*be).peak) / 1048576.0 : peak_rss_mib();
    };
    const std::string where = gpu ? "peak device" : "peak RSS";
    UNet net(cfg);
    const Shape flat{net.layout().total()};
    Tensor host = Tensor::zeros(flat);
    net.init_he(host, 1);
    Tensor params = be->alloc(flat);
    be->upload(host, params);

    if (*train) {
      const Shape s{batch, patch, patch, patch, 1};
      Tensor x = be->alloc(s), t = be->alloc(s), y = be->alloc(s), dy = be->alloc(s);
      Tensor g = be->alloc(flat), m = be->alloc(flat), v = be->alloc(flat);
      be->fill(x, 0.01f);
      int64_t step = 0;
      auto times = time_repeats(repeats, stream, gpu, [&] {
        net.forward(*be, params, x, y, true, static_cast<uint64_t>(step));
        be->mse_loss(y, t, &dy);
        net.backward(*be, params, dy, g);
        be->adam_step(params, g, m, v, AdamConfig{}, ++step);
      });
      double sec = median(times);
      double gflop =
          3.0 * net.forward_flops(patch, patch, patch) * static_cast<double>(batch) / 1e9;
      std::printf(
          "train  %s: depth %d base %d, batch %lld of %lld^3: %.1f ms/step, %.2f samples/s, "
          "%.1f GFLOP/s, %s %.0f MiB, threads %s\n",
          be->name().c_str(), cfg.depth, cfg.base_filters, static_cast<long long>(batch),
          static_cast<long long>(patch), 1e3 * sec, static_cast<double>(batch) / sec, gflop / sec,
          where.c_str(), peak_mib(), threads().c_str());
      std::printf(
          "{\"bench\": \"train\", \"backend\": \"%s\", \"depth\": %d, \"base\": %d, "
          "\"batch\": %lld, \"patch\": %lld, \"ms_per_step\": %.3f, \"samples_per_s\": %.4f, "
          "\"gflop_per_s\": %.2f, \"peak_mib\": %.0f}\n",
          be->name().c_str(), cfg.depth, cfg.base_filters, static_cast<long long>(batch),
          static_cast<long long>(patch), 1e3 * sec, static_cast<double>(batch) / sec, gflop / sec,
          peak_mib());
    } else {
      const Shape s{1, size[0], size[1], size[2], 1};
      net.check_input(s);
      Tensor x = be->alloc(s), y = be->alloc(s);
      be->fill(x, 0.01f);
      auto times =
          time_repeats(repeats, stream, gpu, [&] { net.forward(*be, params, x, y, false); });
      double sec = median(times);
      double gflop = net.forward_flops(size[0], size[1], size[2]) / 1e9;
      std::printf(
          "infer  %s: depth %d base %d, volume %lldx%lldx%lld: %.1f ms, %.1f GFLOP/s, "
          "%s %.0f MiB, threads %s\n",
          be->name().c_str(), cfg.depth, cfg.base_filters, static_cast<long long>(size[0]),
          static_cast<long long>(size[1]), static_cast<long long>(size[2]), 1e3 * sec, gflop / sec,
          where.c_str(), peak_mib(), threads().c_str());
      std::printf(
          "{\"bench\": \"infer\", \"backend\": \"%s\", \"depth\": %d, \"base\": %d, "
          "\"size\": [%lld, %lld, %lld], \"ms\": %.3f, \"gflop_per_s\": %.2f, "
          "\"peak_mib\": %.0f}\n",
          be->name().c_str(), cfg.depth, cfg.base_filters, static_cast<long long>(size[0]),
          static_cast<long long>(size[1]), static_cast<long long>(size[2]), 1e3 * sec, gflop / sec,
          peak_mib());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "deepqsm_bench_unet: %s\n", e.what());
    return 1;
  }
  return 0;
}
