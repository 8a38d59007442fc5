// The deepqsm-infer pipeline (see infer/run.h).
#include "infer/run.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "core/io/nifti_io.h"
#include "core/io/output_files.h"
#include "core/io/png_io.h"
#include "core/nn/checkpoint.h"
#include "core/nn/cpu/cpu_backend.h"
#include "core/nn/unet.h"
#include "core/parallel.h"
#include "core/qsm/ensemble.h"
#include "core/qsm/refine.h"
#include "core/qsm/volume_ops.h"
#include "cuda/device.h"
#include "cuda/nn/cuda_backend.h"
#include "cuda/qsm/inversion.h"

namespace dq {

namespace {

namespace fs = std::filesystem;

constexpr const char* kDefaultModelName = "deepqsm-default.h5";

int64_t round_up(int64_t n, int64_t m) {
  return (n + m - 1) / m * m;
}

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

std::string dims_str(const Dims3& d) {
  std::ostringstream os;
  os << d.nx << "x" << d.ny << "x" << d.nz;
  return os.str();
}

std::string vec_str(const Vec3& v) {
  std::ostringstream os;
  os.precision(4);
  os << v[0] << " x " << v[1] << " x " << v[2];
  return os.str();
}

std::string exe_dir() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.parent_path().string();
}

// D(0) of the fields the model was trained on: data.dipole_k0 of the
// training config its checkpoint stores. The refinement's forward model must
// use the same, or it pulls the mean of chi away from what the network learnt.
// 1/3 (every config's default) when the file holds no readable value.
double trained_dipole_k0(const std::string& config_json) {
  const nlohmann::json cfg = nlohmann::json::parse(config_json, nullptr, false);
  if (cfg.is_object() && cfg.contains("data") && cfg["data"].is_object()) {
    const auto& data = cfg["data"];
    const auto it = data.find("dipole_k0");
    if (it != data.end() && it->is_number() && std::isfinite(it->get<double>()))
      return it->get<double>();
  }
  return RefineOptions{}.k0_value;
}

}  // namespace

std::string default_model_path() {
  if (const char* env = std::getenv("DEEPQSM_MODEL"); env && *env) return env;
  std::vector<fs::path> candidates;
  const std::string dir = exe_dir();
  if (!dir.empty()) {
    candidates.push_back(fs::path(dir) / ".." / "models" / kDefaultModelName);
    candidates.push_back(fs::path(dir) / "models" / kDefaultModelName);
    candidates.push_back(fs::path(dir) / ".." / "share" / "deepqsm" / kDefaultModelName);
  }
  // The source tree this file was compiled from (CMake passes absolute paths),
  // so a build directory anywhere still finds the shipped model.
  candidates.push_back(fs::path(__FILE__).parent_path().parent_path() / "models" /
                       kDefaultModelName);
  std::error_code ec;
  for (const fs::path& c : candidates)
    if (fs::is_regular_file(c, ec)) return fs::weakly_canonical(c, ec).string();
  fail("no default model found (looked for ", kDefaultModelName,
       " in models/ and share/deepqsm/ beside the executable and in the source tree); pass "
       "--model or set DEEPQSM_MODEL");
}

int run_inference(const InferOptions& opt) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();

  if (opt.device != "gpu" && opt.device != "auto" && opt.device != "cpu")
    fail("--device must be auto, cpu or gpu, got '", opt.device, "'");
  if (opt.out_path.empty()) fail("an output path is needed (-o chi.nii.gz)");
  if (opt.scales < 1 || opt.scales > 4) fail("--scales must be 1 to 4, got ", opt.scales);
  if (opt.refine < 0) fail("--refine must be >= 0 iterations, got ", opt.refine);
  if (opt.refine_pad < 0) fail("--refine-pad must be >= 0 voxels, got ", opt.refine_pad);
  if (!(opt.refine_lambda >= 0) || !std::isfinite(opt.refine_lambda))
    fail("--refine-lambda must be \"auto\" or a finite number > 0, got ", opt.refine_lambda);
  // Refused before the network runs rather than by the refinement after it.
  if (!(opt.refine_tv == 0 || refine_tv_weight_ok(opt.refine_tv)))
    fail("--refine-tv must be 0 or within [1e-30, 1e30], got ", opt.refine_tv);
  if (opt.refine_tv > 0 && opt.refine_lambda != 0 && !refine_tv_weight_ok(opt.refine_lambda))
    fail("--refine-lambda must be within [1e-30, 1e30] with --refine-tv, got ", opt.refine_lambda);
  if (opt.flips != 1 && opt.flips != 2 && opt.flips != 4 && opt.flips != 8)
    fail("--flips must be 1, 2, 4 or 8, got ", opt.flips);
  if (!(opt.scale_sigma >= 0) || !std::isfinite(opt.scale_sigma))
    fail("--scale-sigma must be a finite number >= 0 (voxels), got ", opt.scale_sigma);
  if (opt.threads < 0) fail("--threads must be >= 1 (0 = all), got ", opt.threads);
  if (opt.threads > 0) set_cpu_threads(opt.threads);
  // Outputs before anything else: a typo in a path should cost no computation,
  // and an output on an input's path would destroy that input.
  check_nifti_output(opt.out_path, "-o", {opt.field_path, opt.mask_path, opt.model_path});
  if (!opt.preview_path.empty())
    check_output_file(opt.preview_path, "--preview",
                      {opt.out_path, opt.field_path, opt.mask_path, opt.model_path});

  // Model first: a bad model file should fail before minutes of work.
  const std::string model_path = opt.model_path.empty() ? default_model_path() : opt.model_path;
  CheckpointData ck = load_checkpoint(model_path, true);
  UNet net(ck.model);
  const int64_t mult = net.side_multiple();

  Volume field = read_nifti(opt.field_path);
  const Dims3 dims = field.dims();
  const int64_t n = field.numel();
  const FieldUnit unit = field_unit_from_name(opt.units);
  const double factor = to_ppm_factor(unit, opt.b0_tesla, opt.te_s);

  std::vector<uint8_t> mask(static_cast<size_t>(n), 1);
  if (!opt.mask_path.empty()) {
    const Volume m = read_nifti(opt.mask_path);
    if (m.nx != field.nx || m.ny != field.ny || m.nz != field.nz)
      fail(opt.mask_path, ": mask grid ", dims_str(m.dims()), " differs from the field's grid ",
           dims_str(dims), " (", opt.field_path, ")");
    const std::string other =
        voxel_size_mismatch(field, "the field", m, "the mask " + opt.mask_path);
    if (!other.empty()) std::cerr << "deepqsm-infer: warning: " << other << "\n";
    for (int64_t i = 0; i < n; ++i)
      mask[static_cast<size_t>(i)] = m.data[static_cast<size_t>(i)] > 0.5f;
  }
  const MaskedField masked = mask_field(field.data, mask, opt.field_path);
  const int64_t n_nan = masked.nan, n_in = masked.inside;
  for (float& v : field.data) {
    v = static_cast<float>(v * factor);
    if (!std::isfinite(v))
      fail(opt.field_path, ": the field overflows float in ppm (conversion factor ", factor,
           "); check --units, --b0 and --te");
  }
  if (n_nan > 0)
    std::cerr << "deepqsm-infer: warning: " << n_nan << " NaN voxels in " << opt.field_path
              << " are treated as outside the mask (output 0 there)\n";

  std::printf("input:  %s, grid %s, voxel %s mm, %lld voxels in the mask\n", opt.field_path.c_str(),
              dims_str(dims).c_str(), vec_str(field.voxel_mm).c_str(),
              static_cast<long long>(n_in));
  if (unit == FieldUnit::ppm)
    std::printf("units:  ppm (as given)\n");
  else
    std::printf("units:  %s -> ppm, x %.6g (B0 %.4g T%s)\n", opt.units.c_str(), factor,
                opt.b0_tesla,
                unit == FieldUnit::rad ? (", TE " + std::to_string(opt.te_s) + " s").c_str() : "");

  // ---- geometry: work on an isotropic grid with B0 along z.
  const double tilt = angle_to_z_deg(opt.b0_dir);
  const double vmin = *std::min_element(field.voxel_mm.begin(), field.voxel_mm.end());
  const double vmax = *std::max_element(field.voxel_mm.begin(), field.voxel_mm.end());
  const bool rotate = tilt > opt.max_tilt_deg;
  const bool iso = vmax / vmin > opt.max_anisotropy;
  const Grid in_grid{dims, field.voxel_mm};
  Grid work{dims, field.voxel_mm};
  // R takes the input's axes to the work axes (R b = z); resample() reads
  // in(M p), so going to the work grid uses M = R^T and coming back M = R.
  const Mat3 R = rotate ? rotation_to_z(opt.b0_dir) : Mat3{1, 0, 0, 0, 1, 0, 0, 0, 1};
  std::vector<float> wfield;
  std::vector<uint8_t> wmask;
  if (rotate || iso) {
    work = rotated_bounding_grid(in_grid, transpose(R), vmin);
    wfield = resample(field.data.data(), in_grid, work, transpose(R));
    std::vector<float> mf(mask.begin(), mask.end());
    const std::vector<float> wm = resample(mf.data(), in_grid, work, transpose(R));
    wmask.resize(wm.size());
    for (size_t i = 0; i < wm.size(); ++i) wmask[i] = wm[i] > 0.5f;
    if (rotate)
      std::printf(
          "B0:     direction %s is %.2f deg from z: resampled (trilinear) so B0 is along z, "
          "inverted, resampled back\n",
          vec_str(opt.b0_dir).c_str(), tilt);
    if (iso)
      std::printf(
          "voxels: anisotropic (ratio %.3f > %.3f): resampled to %.4g mm isotropic and back\n",
          vmax / vmin, opt.max_anisotropy, vmin);
    std::printf("work:   grid %s, voxel %s mm\n", dims_str(work.dims).c_str(),
                vec_str(work.voxel_mm).c_str());
  } else {
    std::printf("B0:     along z%s; voxels isotropic within %.2f: no resampling\n",
                tilt > 0 ? " (within the tolerance)" : "", opt.max_anisotropy);
  }
  const Dims3 wd = work.dims;

  // ---- network on the work grid: whole volume (padded) or tiles.
  // auto takes the GPU when one is visible and works (a GPU it cannot use:
  // no kernel image for its architecture, cuDNN missing, memory taken by
  // others, falls back to the CPU with a warning); gpu fails with a clear
  // message instead.
  bool gpu = opt.device == "gpu" || (opt.device == "auto" && cuda_device_count() > 0);
  std::unique_ptr<Backend> be;
  if (gpu) {
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
      gpu = false;
    }
  }
  if (!be) be = make_cpu_backend();
  std::printf("model:  %s (U-Net depth %d, base %d filters, trained %lld steps)\n",
              model_path.c_str(), ck.model.depth, ck.model.base_filters,
              static_cast<long long>(ck.step));
  std::printf("device: %s; CPU threads: %d\n", be->name().c_str(), cpu_threads());
  Tensor params = be->alloc(ck.params.shape());
  be->upload(ck.params, params);
  const VolumeFn run_net = [&](const Dims3& td, const std::vector<float>& in,
                               std::vector<float>& out) {
    const Shape s{1, td.nz, td.ny, td.nx, 1};
    // The backend only reads the input; wrap's pointer is non-const by design.
    Tensor host_in = Tensor::wrap(const_cast<float*>(in.data()), s, DType::f32, Device::cpu);
    Tensor x = be->alloc(s), y = be->alloc(s);
    be->upload(host_in, x);
    net.forward(*be, params, x, y, false);
    Tensor host_out = Tensor::wrap(out.data(), s, DType::f32, Device::cpu);
    be->download(y, host_out);
  };

  // One network pass over a grid of any size: padded to the side multiple,
  // whole or in tiles. Called once per scale; reports its plan on stdout.
  const PredictFn predict = [&](const std::vector<float>& f, const Dims3& d) {
    const PadPlan plan = pad_plan(d, mult);
    const double need = static_cast<double>(plan.out.numel()) * bytes_per_voxel(ck.model);
    // The GPU's own memory bounds a pass there: what the driver still has
    // plus what the backend's pool holds unused.
    double avail = available_memory_bytes();
    if (gpu) {
      const DevicePoolStats pool = cuda_pool_stats(*be);
      avail = static_cast<double>(cuda_free_bytes() + pool.capacity - pool.in_use);
    }
    int64_t tile = opt.tile;
    if (tile == 0 && need > 0.5 * avail) {
      // The largest tile whose pass fits in half the available memory.
      tile = std::max<int64_t>(
          mult,
          static_cast<int64_t>(std::cbrt(0.5 * avail / bytes_per_voxel(ck.model))) / mult * mult);
      std::printf(
          "memory: a whole-volume pass needs ~%.1f GiB, %.1f GiB of %s memory available: "
          "tiling\n",
          need / 1073741824.0, avail / 1073741824.0, gpu ? "GPU" : "host");
    }
    const std::vector<float> padded = pad_volume(f.data(), plan);
    std::vector<float> out(padded.size(), 0.0f);
    if (tile > 0) {
      if (tile % mult != 0)
        fail("--tile ", tile, " must be a multiple of ", mult, " for this model");
      int64_t halo = opt.halo;
      if (halo < 0) {
        // The receptive radius makes tiles agree with a whole-volume pass up to
        // rounding; a tile too small for it gets the largest halo it can hold.
        halo = round_up(receptive_radius(ck.model), mult);
        const int64_t fit = (tile - mult) / 2 / mult * mult;
        if (halo > fit) {
          std::printf(
              "note:   halo %lld < receptive radius %lld for tile %lld: results may differ "
              "slightly near tile borders (use a larger --tile)\n",
              static_cast<long long>(fit), static_cast<long long>(receptive_radius(ck.model)),
              static_cast<long long>(tile));
          halo = fit;
        }
      }
      // Tiles cover the padded grid, so they sit on the whole pass's pooling grid.
      const std::vector<Tile> tiles = make_tiles(plan.out, tile, halo, mult);
      std::printf("pad:    %s -> %s (multiple of %lld)\n", dims_str(d).c_str(),
                  dims_str(plan.out).c_str(), static_cast<long long>(mult));
      std::printf("tiles:  %zu tiles of %lld^3 with a %lld-voxel halo (receptive radius %lld)\n",
                  tiles.size(), static_cast<long long>(tile), static_cast<long long>(halo),
                  static_cast<long long>(receptive_radius(ck.model)));
      run_tiled(padded.data(), plan.out, tiles, run_net, out.data());
    } else {
      std::printf("pad:    %s -> %s (multiple of %lld), one pass\n", dims_str(d).c_str(),
                  dims_str(plan.out).c_str(), static_cast<long long>(mult));
      run_net(plan.out, padded, out);
    }
    return crop_volume(out.data(), plan);
  };
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
  const PredictFn mirrored = [&](const std::vector<float>& f, const Dims3& d) {
    return predict_mirrored(f, d, opt.flips, predict);
  };
  const auto seconds_since = [](Clock::time_point t) {
    return std::chrono::duration<double>(Clock::now() - t).count();
  };
  const auto t_net = Clock::now();
  std::vector<float> wchi = predict_multiscale(wfield.empty() ? field.data : wfield, wd, opt.scales,
                                               opt.scale_sigma, mirrored);
  const double net_secs = seconds_since(t_net);
  // The network is done: its buffers, weights and the backend's memory go
  // back before the refinement allocates its FFT grids (on the GPU, the
  // pool would otherwise keep them from cuda_refine_chi).
  net.release_buffers();
  params = Tensor();
  be.reset();

  // ---- back to the input grid, masked.
  std::vector<float> chi;
  if (rotate || iso) {
    apply_mask(wchi.data(), wmask.data(), wd.numel());
    chi = resample(wchi.data(), work, in_grid, R);
  } else {
    chi = std::move(wchi);
  }
  apply_mask(chi.data(), mask.data(), n);
  double refine_secs = 0.0;
  if (opt.refine > 0) {
    const auto t_refine = Clock::now();
    // Data consistency after the network (core/qsm/refine.h): ADMM on J_TV, or
    // CG on |D*chi - f|^2 + lambda |chi - chi_net|^2 inside the mask.
    RefineOptions ro;
    ro.iterations = opt.refine;
    ro.lambda = opt.refine_lambda;
    ro.tv = opt.refine_tv;
    if (ro.lambda == 0 && ro.tv > 0) {
      ro.lambda = kRefineTvLambda;
    } else if (ro.lambda == 0) {
      const double noise = estimate_noise_std(field.data.data(), mask.data(), dims);
      ro.lambda = refine_lambda_for_noise(noise);
      std::printf("noise:  %.3g ppm (white-noise sd from the field's Laplacian) -> lambda %.3g\n",
                  noise, ro.lambda);
    }
    ro.pad = opt.refine_pad;
    ro.k0_value = trained_dipole_k0(ck.config_json);
    if (ro.k0_value != RefineOptions{}.k0_value)
      std::printf("refine: D(0) = %g, as in the model's training data\n", ro.k0_value);
    char how[64] = "conjugate-gradient iterations,";
    if (ro.tv > 0) std::snprintf(how, sizeof how, "ADMM iterations with TV alpha %g,", ro.tv);
    std::printf("refine: %d %s lambda %g, FFTs on %s (%lld zero voxels added per side)%s\n",
                opt.refine, how, ro.lambda, dims_str(dims.padded(ro.pad)).c_str(),
                static_cast<long long>(ro.pad),
                gpu && ro.tv > 0 ? ", on the CPU (no GPU version of the TV refinement yet)" : "");
    std::vector<float> refined(chi.size());
    std::vector<double> objective;
    if (gpu && ro.tv == 0)
      cuda_refine_chi(field.data.data(), chi.data(), mask.data(), dims, field.voxel_mm, opt.b0_dir,
                      ro, refined.data(), &objective);
    else
      refine_chi(field.data.data(), chi.data(), mask.data(), dims, field.voxel_mm, opt.b0_dir, ro,
                 refined.data(), &objective);
    chi = std::move(refined);
    apply_mask(chi.data(), mask.data(), n);
    std::printf("refine: objective %.4g -> %.4g\n", objective.empty() ? 0.0 : objective.front(),
                objective.empty() ? 0.0 : objective.back());
    refine_secs = seconds_since(t_refine);
  }
  require_finite_result(chi, "chi");
  // The preview and the map appear together or not at all: if either
  // cannot be written, both old files stay as they were.
  OutputGroup outputs;
  if (!opt.preview_path.empty()) {
    const auto fw = robust_window(field.data.data(), n);
    const auto cw = robust_window(chi.data(), n);
    write_slices_png(opt.preview_path,
                     {{"field (ppm)", field.data.data(), dims, fw.first, fw.second},
                      {"chi (ppm)", chi.data(), dims, cw.first, cw.second}});
  }
  write_nifti(opt.out_path, field, chi.data());
  outputs.commit();
  if (!opt.preview_path.empty())
    std::printf("preview: %s (central axial, coronal, sagittal slices)\n",
                opt.preview_path.c_str());
  std::printf("output: %s (chi, ppm, float32, the input's header and affine)\n",
              opt.out_path.c_str());
  std::printf(
      "done in %.1f s (network %.1f s, refinement %.1f s, the rest reading, writing and "
      "resampling)%s\n",
      seconds_since(t0), net_secs, refine_secs,
      n_nan > 0 ? ("; " + std::to_string(n_nan) + " NaN voxels set to 0").c_str() : "");
  return 0;
}

}  // namespace dq
