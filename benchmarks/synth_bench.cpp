// Throughput of the synthetic-data generator on the paper recipe
// (configs/deepqsm-paper.json's "data": 160^3, 80-120 cubes and spheres,
// 100 patches of 64^3 per volume): volumes/s and patches/s of the CPU
// generator, split into its stages, of the streaming producer (what the
// trainer sees), and of the GPU generator when a GPU is present.
//
//   deepqsm_bench_synth [volumes]     (default 4 per measurement)
//
// Patches/s counts patches_per_volume patches per volume; the CPU numbers
// are single-threaded except the stream with 2 workers.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <vector>

#include "benchmarks/timing.h"
#include "core/qsm/dipole.h"
#include "cuda/check.h"
#include "cuda/device.h"
#include "synth/stream.h"
#include "synth/synth.h"
#include "synth/synth_gpu.h"

using namespace dq;

namespace {

using bench::seconds;

void report(const char* what, int64_t volumes, int64_t patches, double s) {
  std::printf("%-44s %8.2f volumes/s %10.1f patches/s  (%.2f s per volume)\n", what,
              static_cast<double>(volumes) / s, static_cast<double>(patches) / s,
              s / static_cast<double>(volumes));
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t volumes = argc > 1 ? std::atoll(argv[1]) : 4;
  if (volumes < 1) {
    std::fprintf(stderr, "usage: deepqsm_bench_synth [volumes >= 1]\n");
    return 2;
  }
  const Recipe r;  // the paper's recipe
  const int64_t n = r.volume_size, per = r.patches_per_volume, P = r.patch_size;
  std::printf(
      "paper recipe: %lld^3 volumes, %d-%d cubes, %d-%d spheres, %lld patches of %lld^3; "
      "%lld volumes per measurement\n",
      static_cast<long long>(n), r.cubes_min, r.cubes_max, r.spheres_min, r.spheres_max,
      static_cast<long long>(per), static_cast<long long>(P), static_cast<long long>(volumes));

  // Stages of the CPU generator.
  std::vector<float> chi(static_cast<size_t>(n * n * n)), field(chi.size());
  double t_draw = 0, t_raster = 0, t_fft = 0;
  for (int64_t v = 0; v < volumes; ++v) {
    std::vector<SynthShape> shapes;
    t_draw += seconds([&] { shapes = draw_shapes(r, 1, v); });
    std::fill(chi.begin(), chi.end(), 0.0f);
    t_raster += seconds([&] { rasterise(r, shapes, chi.data()); });
    t_fft += seconds([&] {
      forward_field(chi.data(), {n, n, n}, r.voxel_mm, r.b0_dir, r.dipole_k0, r.pad, field.data());
    });
  }
  std::printf(
      "CPU stages per volume: draw_shapes %.4f s, rasterise %.3f s, forward_field (FFTW) %.3f s\n",
      t_draw / volumes, t_raster / volumes, t_fft / volumes);

  std::vector<float> pf(static_cast<size_t>(per * P * P * P)), pc(pf.size());
  const double t_cpu = seconds([&] {
    for (int64_t v = 0; v < volumes; ++v) {
      const SynthVolume sv = generate_volume(r, 1, v);
      cut_patches(r, sv, 1, v, static_cast<int>(per), pf.data(), pc.data());
    }
  });
  report("CPU generator (generate_volume + cut_patches)", volumes, volumes * per, t_cpu);

  for (int workers : {1, 2}) {
    StreamConfig cfg;
    cfg.recipe = r;
    cfg.batch = 40;
    cfg.pool = 2;  // groups of 2 volumes: 5 batches each
    cfg.workers = workers;
    // Read every batch of volumes/2 groups as fast as they come: the time
    // to the last one is the producer's sustained rate (it is never more
    // than one group ahead, so it cannot bank work before the clock starts).
    const int64_t groups = std::max<int64_t>(1, volumes / 2);
    const int64_t batches = groups * cfg.batches_per_group();
    std::unique_ptr<PatchStream> stream;
    const double s = seconds([&] {
      stream = std::make_unique<PatchStream>(cfg);
      for (int64_t b = 0; b < batches; ++b) stream->next();
    });
    stream.reset();  // waits for the volume in progress: not part of the rate
    const std::string what = "CPU stream, " + std::to_string(workers) + " worker(s), batch 40";
    report(what.c_str(), groups * cfg.group_volumes(), batches * cfg.batch, s);
  }

  if (cuda_device_count() == 0) {
    std::printf("GPU: none found, GPU generator not measured\n");
    return 0;
  }
  std::printf("GPU: %s\n", cuda_device_summary(0).c_str());
  GpuSynth gen(r, nullptr);
  DeviceBuffer df(sizeof(float) * pf.size()), dc(sizeof(float) * pf.size());
  gen.generate(1, 0);  // warm-up: plans, first launches
  DQ_CUDA(cudaDeviceSynchronize());
  const int64_t gpu_volumes = volumes * 10;
  const double t_gpu = seconds([&] {
    for (int64_t v = 0; v < gpu_volumes; ++v) {
      gen.generate(1, v);
      gen.cut_patches(1, v, static_cast<int>(per), static_cast<float*>(df.data()),
                      static_cast<float*>(dc.data()));
    }
    DQ_CUDA(cudaDeviceSynchronize());
  });
  report("GPU generator (patches left on the device)", gpu_volumes, gpu_volumes * per, t_gpu);
  const double t_gpu_host = seconds([&] {
    for (int64_t v = 0; v < gpu_volumes; ++v) {
      gen.generate(1, v);
      gen.cut_patches_to_host(1, v, static_cast<int>(per), pf.data(), pc.data());
    }
  });
  report("GPU generator (patches copied to the host)", gpu_volumes, gpu_volumes * per, t_gpu_host);
  return 0;
}
