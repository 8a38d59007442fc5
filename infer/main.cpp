// deepqsm-infer: the lean binary QSM users run. A local field map in, a
// susceptibility map out (both NIfTI). Options here; the pipeline is
// run_inference (infer/run.cpp), its stages are infer/stages.h. Every
// failure is one line on stderr and exit status 1.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <iostream>
#include <new>
#include <string>
#include <vector>

#include "core/cli_checks.h"
#include "infer/run.h"

namespace {

constexpr const char* kVersion = "0.1.0";  // must match project(deepqsm VERSION ...)

constexpr const char* kAbout =
    "deepqsm-infer runs DeepQSM (Bollmann et al., NeuroImage 2019), a 3D U-Net that inverts\n"
    "the dipole convolution of quantitative susceptibility mapping: it reads a local\n"
    "(background-removed) field map and writes the magnetic susceptibility (chi) map in ppm.\n"
    "\n"
    "Input: a 3D NIfTI file (.nii or .nii.gz, any numeric datatype; scl_slope/scl_inter\n"
    "applied). Output: float32 NIfTI with the input's header and affine. Any grid works: the\n"
    "volume is zero-padded to a multiple of the network's side multiple (16 for 5 levels) and\n"
    "cropped back, or processed in overlapping tiles (--tile/--halo, or automatically when it\n"
    "does not fit in memory). NaN voxels are treated as outside the mask (output 0) and\n"
    "counted in a warning; infinite voxels are an error.\n"
    "\n"
    "Units (--units): the network works in ppm. With gamma/2pi = 42.577478 MHz/T,\n"
    "  hz:  field_ppm = field_Hz / (gamma/2pi * B0) * 1e6\n"
    "  rad: field_ppm = phase_rad / (2 pi * TE * gamma/2pi * B0) * 1e6\n"
    "(B0 in tesla from --b0, TE in seconds from --te).\n"
    "\n"
    "Geometry: --b0-direction is in the voxel axes of the input (default 0 0 1). When it is\n"
    "more than 0.5 deg from z, the field is resampled (trilinear) onto a grid where B0 is along\n"
    "z, inverted there, and resampled back. Voxels whose largest/smallest side ratio exceeds\n"
    "--max-anisotropy (default 1.1) are resampled to isotropic (the smallest side) and back.\n"
    "\n"
    "Scales (--scales, default 2): the dipole kernel depends on the direction of k only, so\n"
    "the inversion looks the same at every scale. The network also runs on the field averaged\n"
    "over 2x2x2 voxels, where it reaches twice as far, and that pass supplies the large\n"
    "structures (below ~1/(2 pi sigma) cycles/voxel, sigma = --scale-sigma, default 16); the\n"
    "full-resolution pass supplies edges and detail; 1 to 4 scales. --scales 1 runs at full\n"
    "resolution only.\n"
    "Mirroring the field along x, y or z mirrors chi (D(k) is even in each k component), so\n"
    "--flips N (default 1; 2: x, 4: x, y, xy) averages N mirrored passes per scale, which\n"
    "cancels part of the network's error at N times the network's cost; with the TV\n"
    "refinement below it gains little.\n"
    "--scales 1 --flips 1 --refine 0 is the paper's single network pass.\n"
    "\n"
    "Refinement (--refine, default 40 iterations): the network's chi is then pulled towards\n"
    "data consistency, minimising by ADMM\n"
    "  1/2 |M (D*chi - field)|^2 + alpha TV(chi) + lambda/2 |chi - chi_net|^2\n"
    "(M the mask, TV the anisotropic total variation, alpha = --refine-tv, default 5e-4,\n"
    "lambda = --refine-lambda, auto = 1e-3), with the dipole convolution zero-padded by\n"
    "--refine-pad voxels per side so it does not wrap around. The net supplies what the field\n"
    "cannot (near the cone where D(k) = 0) and the start, the data the rest, and TV keeps the\n"
    "noise and streaks the data let through out of chi. --refine 0 turns it off.\n"
    "--refine-tv 0 runs conjugate gradients on the objective without TV (the default until\n"
    "2026-12-02, then with --flips 4), where lambda auto weighs the two terms by the field's\n"
    "noise: the white-noise sd is estimated from the field's Laplacian inside the mask\n"
    "(printed), and lambda = max(0.01, (noise / 0.02 ppm)^2).\n"
    "These defaults were chosen on synthetic data only (scripts/select-inference.sh,\n"
    "models/README.md).\n"
    "\n"
    "Model: --model, else $DEEPQSM_MODEL, else the first deepqsm-default.h5 in ../models/,\n"
    "models/ or ../share/deepqsm/ beside the executable, or in the source tree's models/.\n"
    "Device: auto (the default) runs the network on the GPU when one is visible (CUDA\n"
    "backend, fp32), else on the CPU (oneDNN); gpu insists on a GPU and fails without one;\n"
    "cpu never touches the GPU.";

std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// --refine-lambda's value: "auto" is 0 (InferOptions' auto), a finite number
// > 0 is itself, anything else NaN.
double parse_refine_lambda(const std::string& s) {
  if (s == "auto") return 0.0;
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  return end != s.c_str() && *end == '\0' && v > 0 && std::isfinite(v) ? v : std::nan("");
}

std::string usage_failure(const CLI::App*, const CLI::Error& e) {
  return "deepqsm-infer: " + one_line(e.what()) + " (see deepqsm-infer --help)\n";
}

}  // namespace

int main(int argc, char** argv) {
  // Line by line even when stdout is a file or a pipe (a batch system's log):
  // each progress line is there when it is printed, also if the run dies.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  dq::InferOptions o;
  std::vector<double> b0_dir;
  CLI::App app{kAbout, "deepqsm-infer"};
  app.set_version_flag("--version", std::string("deepqsm-infer ") + kVersion);
  app.failure_message(usage_failure);
  app.add_option("field", o.field_path, "Local field map (NIfTI, .nii or .nii.gz)")->required();
  app.add_option("-o,--output", o.out_path, "Output chi map (.nii or .nii.gz), ppm")->required();
  app.add_option("--mask", o.mask_path, "Brain mask on the field's grid (voxels > 0.5 are inside)");
  app.add_option("--model", o.model_path, "Checkpoint (.h5) to use instead of the default model");
  app.add_option("--units", o.units, "Unit of the field: ppm, hz or rad")
      ->check(CLI::IsMember({"ppm", "hz", "rad"}))
      ->capture_default_str();
  app.add_option("--b0", o.b0_tesla, "Field strength in tesla (needed for hz and rad)");
  app.add_option("--te", o.te_s, "Echo time in seconds (needed for rad)");
  app.add_option("--b0-direction", b0_dir,
                 "B0 direction x y z in the input's voxel axes (default 0 0 1)")
      ->expected(3);
  app.add_option("--device", o.device, "auto (the GPU when one is visible), cpu or gpu")
      ->check(CLI::IsMember({"auto", "cpu", "gpu"}))
      ->capture_default_str();
  app.add_option("--threads", o.threads,
                 "CPU threads for the network, FFTs and loops (default: $OMP_NUM_THREADS, "
                 "else every hardware thread)")
      ->transform(dq::cli::int_range(1, 4096));
  app.add_option("--tile", o.tile,
                 "Process in cubes of this side (a multiple of the model's side multiple); "
                 "0 = whole volume unless it does not fit in memory")
      ->capture_default_str()
      ->transform(dq::cli::int_range(0, 4096));
  app.add_option("--halo", o.halo,
                 "Overlap kept around each tile's core, voxels (default: the network's receptive "
                 "radius rounded up to the model's side multiple, or the most the tile holds)")
      ->transform(dq::cli::int_range(0, 4096));
  app.add_option("--max-anisotropy", o.max_anisotropy,
                 "Resample to isotropic voxels above this largest/smallest voxel-side ratio (>= 1)")
      ->capture_default_str()
      ->check(dq::cli::number_from(1, false));
  app.add_option("--scales", o.scales,
                 "Network passes at full, 1/2, 1/4 ... resolution, blended so the coarser pass "
                 "gives the large structures (1 to 4; 1 = full resolution only)")
      ->capture_default_str();
  app.add_option("--scale-sigma", o.scale_sigma,
                 "Blend between scales: below the frequencies of a Gaussian of this sigma "
                 "(voxels of the finer grid) the coarser pass is kept")
      ->capture_default_str();
  app.add_option("--flips", o.flips,
                 "Average this many mirrored passes per scale: 1 (none), 2 (x), 4 (x, y) or 8 "
                 "(x, y, z); each costs one more network pass")
      ->capture_default_str();
  app.add_option("--refine", o.refine,
                 "Iterations of data consistency after the network: minimise "
                 "1/2 |D*chi - field|^2 + alpha TV(chi) + lambda/2 |chi - chi_net|^2 inside the "
                 "mask (0 = off)")
      ->capture_default_str();
  app.add_option("--refine-tv", o.refine_tv,
                 "alpha of --refine's total-variation term, ppm mm, as deepqsm invert tv's lambda "
                 "(0 = conjugate gradients "
                 "without TV)")
      ->capture_default_str()
      ->check(CLI::NonNegativeNumber);
  std::string refine_lambda = "auto";
  app.add_option(
         "--refine-lambda", refine_lambda,
         "lambda of --refine: auto (1e-3; with --refine-tv 0, max(0.01, (noise / 0.02 ppm)^2), "
         "the noise estimated from the field) or a number > 0")
      ->capture_default_str()
      ->check(CLI::Validator(
          [](std::string& s) {
            return std::isnan(parse_refine_lambda(s))
                       ? std::string("must be \"auto\" or a finite number > 0, got ") + s
                       : std::string();
          },
          "auto|L"));
  app.add_option("--refine-pad", o.refine_pad,
                 "Zero voxels added on each side for --refine's FFTs, so the dipole convolution "
                 "does not wrap around the grid's edges")
      ->capture_default_str()
      ->transform(dq::cli::int_range(0, 512));
  app.add_option("--preview", o.preview_path,
                 "Write a PNG of the central axial, coronal and sagittal slices of field and chi");
  app.footer(
      "Examples:\n"
      "  deepqsm-infer field.nii.gz -o chi.nii.gz --mask mask.nii.gz\n"
      "  deepqsm-infer freq.nii.gz -o chi.nii.gz --units hz --b0 3 --preview chi.png\n"
      "  deepqsm-infer phase.nii.gz -o chi.nii.gz --units rad --b0 7 --te 0.02 --b0-direction 0 "
      "0.2 1");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  if (!b0_dir.empty()) o.b0_dir = {b0_dir[0], b0_dir[1], b0_dir[2]};
  o.refine_lambda = parse_refine_lambda(refine_lambda);

  try {
    return dq::run_inference(o);
  } catch (const std::bad_alloc&) {
    std::cerr << "deepqsm-infer: out of memory (host RAM) for this volume; try --tile 64 or a "
                 "machine with more memory\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "deepqsm-infer: " << one_line(e.what()) << "\n";
    return 1;
  }
}
