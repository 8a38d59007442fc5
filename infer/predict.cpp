// deepqsm-infer's network stage: a backend (the GPU when it works, else the
// CPU), then the U-Net over the work grid at every scale and flip, each pass
// padded to the side multiple, whole or in tiles (infer/stages.h).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <memory>

#include "core/error.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/unet.h"
#include "core/parallel.h"
#include "core/qsm/ensemble.h"
#include "cuda/device.h"
#include "cuda/nn/cuda_backend.h"
#include "infer/stages.h"

namespace dq {

namespace {

// Voxels on each side that can influence an output voxel: every 3x3x3
// convolution at level l widens it by 2^l (two per level on the way down,
// two at the bottleneck, two per level on the way up), pooling adds up to
// 2^(depth-1) - 1 of alignment, a 3x3x3 head one more. The effective field
// of a trained net is narrower, but only this bound makes tiled and
// whole-volume passes agree to rounding (tests/test_volume_ops.cpp).
int64_t receptive_radius(const UNetConfig& c) {
  int64_t r = 0;
  for (int l = 0; l < c.depth - 1; ++l) r += 4 * (int64_t{1} << l);
  r += 2 * (int64_t{1} << (c.depth - 1));
  r += (int64_t{1} << (c.depth - 1)) - 1;
  if (c.head_kernel == 3) r += 1;
  return r;
}

// Bytes the forward pass needs per voxel of input: an inference pass keeps
// about 6.5 volumes of F0 channels (at full resolution the encoder's d0 and
// d1, the upsampled tensor and the 2 F0 concat; lower levels add a quarter;
// UNet::forward), fp32, and a quarter more for what the backend keeps
// alongside. (The 160^3 benchmark of the paper's net, F0 = 16, peaks at
// 1.8 GiB of RSS against 2.0 GiB from this.)
double bytes_per_voxel(const UNetConfig& c) {
  return 4.0 * 6.5 * c.base_filters * 1.25;
}

// --device auto takes the GPU when one is visible and works (a GPU it cannot
// use: no kernel image for its architecture, cuDNN missing, memory taken by
// others, falls back to the CPU with a warning); gpu fails with a clear
// message instead. *gpu says which it got.
std::unique_ptr<Backend> choose_backend(const InferOptions& opt, bool* gpu) {
  *gpu = opt.device == "gpu" || (opt.device == "auto" && cuda_device_count() > 0);
  std::unique_ptr<Backend> be;
  if (*gpu) {
    try {
      be = make_cuda_backend(CudaBackendOptions{});
      Tensor probe = be->alloc(Shape{16});  // a kernel and a copy: the device really works
      be->fill(probe, 1.0f);
      Tensor host = Tensor::zeros(Shape{16});
      be->download(probe, host);
      if (host.f32()[15] != 1.0f) fail("the GPU returned wrong values for a test fill");
    } catch (const Error& e) {
      if (opt.device == "gpu") throw;
      std::fprintf(stderr, "warning: the GPU is not usable (%s); running on the CPU\n", e.what());
      be.reset();
      *gpu = false;
    }
  }
  if (!be) be = make_cpu_backend();
  return be;
}

// The U-Net on one backend with its weights uploaded; pass() runs it on one
// volume or tile, plan() picks whole or tiled for a grid and runs it.
struct NetworkPasses {
  const InferOptions& opt;
  bool gpu;
  Backend& be;
  UNet& net;
  Tensor& params;

  const UNetConfig& model() const { return net.config(); }
  int64_t mult() const { return net.side_multiple(); }

  void pass(const Dims3& td, const std::vector<float>& in, std::vector<float>& out) const {
    const Shape s{1, td.nz, td.ny, td.nx, 1};
    // The backend only reads the input; wrap's pointer is non-const by design.
    Tensor host_in = Tensor::wrap(const_cast<float*>(in.data()), s, DType::f32, Device::cpu);
    Tensor x = be.alloc(s), y = be.alloc(s);
    be.upload(host_in, x);
    net.forward(be, params, x, y, false);
    Tensor host_out = Tensor::wrap(out.data(), s, DType::f32, Device::cpu);
    be.download(y, host_out);
  }

  // --tile, or when a whole-volume pass over `padded` would not fit in half
  // the memory (the GPU's own there: what the driver still has plus what
  // the backend's pool holds unused), the largest tile that does; 0 = whole.
  int64_t tile_side(const Dims3& padded) const {
    const double need = static_cast<double>(padded.numel()) * bytes_per_voxel(model());
    double avail = available_memory_bytes();
    if (gpu) {
      const DevicePoolStats pool = cuda_pool_stats(be);
      avail = static_cast<double>(cuda_free_bytes() + pool.capacity - pool.in_use);
    }
    if (opt.tile != 0 || !(need > 0.5 * avail)) return opt.tile;
    const int64_t tile = std::max<int64_t>(
        mult(),
        static_cast<int64_t>(std::cbrt(0.5 * avail / bytes_per_voxel(model()))) / mult() * mult());
    std::printf(
        "memory: a whole-volume pass needs ~%.1f GiB, %.1f GiB of %s memory available: "
        "tiling\n",
        need / 1073741824.0, avail / 1073741824.0, gpu ? "GPU" : "host");
    return tile;
  }

  // --halo, or the receptive radius, which makes tiles agree with a
  // whole-volume pass up to rounding; a tile too small for it gets the
  // largest halo it can hold.
  int64_t halo_for(int64_t tile) const {
    if (opt.halo >= 0) return opt.halo;
    const int64_t halo = round_up(receptive_radius(model()), mult());
    const int64_t fit = (tile - mult()) / 2 / mult() * mult();
    if (halo <= fit) return halo;
    std::printf(
        "note:   halo %lld < receptive radius %lld for tile %lld: results may differ "
        "slightly near tile borders (use a larger --tile)\n",
        static_cast<long long>(fit), static_cast<long long>(receptive_radius(model())),
        static_cast<long long>(tile));
    return fit;
  }

  // One network pass over a grid of any size: padded to the side multiple,
  // whole or in tiles. Called once per scale and flip; reports its plan.
  std::vector<float> run(const std::vector<float>& f, const Dims3& d) const {
    const PadPlan plan = pad_plan(d, mult());
    const int64_t tile = tile_side(plan.out);
    const std::vector<float> padded = pad_volume(f.data(), plan);
    std::vector<float> out(padded.size(), 0.0f);
    const VolumeFn run_net = [this](const Dims3& td, const std::vector<float>& in,
                                    std::vector<float>& o) { pass(td, in, o); };
    if (tile > 0) {
      if (tile % mult() != 0)
        fail("--tile ", tile, " must be a multiple of ", mult(), " for this model");
      const int64_t halo = halo_for(tile);
      // Tiles cover the padded grid, so they sit on the whole pass's pooling grid.
      const std::vector<Tile> tiles = make_tiles(plan.out, tile, halo, mult());
      std::printf("pad:    %s -> %s (multiple of %lld)\n", dims_str(d).c_str(),
                  dims_str(plan.out).c_str(), static_cast<long long>(mult()));
      std::printf("tiles:  %zu tiles of %lld^3 with a %lld-voxel halo (receptive radius %lld)\n",
                  tiles.size(), static_cast<long long>(tile), static_cast<long long>(halo),
                  static_cast<long long>(receptive_radius(model())));
      run_tiled(padded.data(), plan.out, tiles, run_net, out.data());
    } else {
      std::printf("pad:    %s -> %s (multiple of %lld), one pass\n", dims_str(d).c_str(),
                  dims_str(plan.out).c_str(), static_cast<long long>(mult()));
      run_net(plan.out, padded, out);
    }
    return crop_volume(out.data(), plan);
  }
};

void report_ensemble(const InferOptions& opt) {
  if (opt.scales > 1)
    std::printf(
        "scales: %d (the network also runs on the field averaged to %gx the voxel size; "
        "below about 1/(2 pi %g) cycles/voxel the coarser pass is kept)\n",
        opt.scales, std::pow(2.0, opt.scales - 1), opt.scale_sigma);
  if (opt.flips > 1)
    std::printf("flips:  %d mirrored passes per scale averaged (%s)\n", opt.flips,
                opt.flips == 2   ? "x"
                : opt.flips == 4 ? "x, y"
                                 : "x, y, z");
}

}  // namespace

double available_memory_bytes() {
  std::ifstream f("/proc/meminfo");
  std::string key;
  double kb = 0;
  while (f >> key >> kb) {
    if (key == "MemAvailable:") return kb * 1024.0;
    f.ignore(256, '\n');
  }
  return static_cast<double>(sysconf(_SC_AVPHYS_PAGES)) *
         static_cast<double>(sysconf(_SC_PAGESIZE));
}

Prediction predict(const InferInputs& in, const WorkGeometry& geo, const InferOptions& opt) {
  const CheckpointData& ck = in.model;
  UNet net(ck.model);
  Prediction out;
  std::unique_ptr<Backend> be = choose_backend(opt, &out.gpu);
  std::printf("model:  %s (U-Net depth %d, base %d filters, trained %lld steps)\n",
              in.model_path.c_str(), ck.model.depth, ck.model.base_filters,
              static_cast<long long>(ck.step));
  std::printf("device: %s; CPU threads: %d\n", be->name().c_str(), cpu_threads());
  Tensor params = be->alloc(ck.params.shape());
  be->upload(ck.params, params);
  const NetworkPasses passes{opt, out.gpu, *be, net, params};
  const PredictFn predict_one = [&](const std::vector<float>& f, const Dims3& d) {
    return passes.run(f, d);
  };
  report_ensemble(opt);
  const PredictFn mirrored = [&](const std::vector<float>& f, const Dims3& d) {
    return predict_mirrored(f, d, opt.flips, predict_one);
  };
  const auto t0 = std::chrono::steady_clock::now();
  out.chi =
      predict_multiscale(work_field(in, geo), geo.work.dims, opt.scales, opt.scale_sigma, mirrored);
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // The network is done: its buffers, weights and the backend's memory go
  // back before the refinement allocates its FFT grids (on the GPU, the
  // pool would otherwise keep them from cuda_refine_chi).
  net.release_buffers();
  params = Tensor();
  be.reset();
  return out;
}

}  // namespace dq
