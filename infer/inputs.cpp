// deepqsm-infer's first stages: check the options, find and read the model,
// read the field and the mask, convert the field to ppm (infer/stages.h).
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <sstream>

#include "core/error.h"
#include "core/parallel.h"
#include "core/qsm/refine.h"
#include "infer/stages.h"

namespace dq {

namespace {

namespace fs = std::filesystem;

constexpr const char* kDefaultModelName = "deepqsm-default.h5";

std::string exe_dir() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  return ec ? std::string() : p.parent_path().string();
}

// The mask on the field's grid (1 inside; all 1 without --mask), warning
// when its voxels differ from the field's.
std::vector<uint8_t> read_mask(const InferOptions& opt, const Volume& field) {
  std::vector<uint8_t> mask(static_cast<size_t>(field.numel()), 1);
  if (opt.mask_path.empty()) return mask;
  const Volume m = read_nifti(opt.mask_path);
  if (m.nx != field.nx || m.ny != field.ny || m.nz != field.nz)
    fail(opt.mask_path, ": mask grid ", dims_str(m.dims()), " differs from the field's grid ",
         dims_str(field.dims()), " (", opt.field_path, ")");
  const std::string other = voxel_size_mismatch(field, "the field", m, "the mask " + opt.mask_path);
  if (!other.empty()) std::cerr << "deepqsm-infer: warning: " << other << "\n";
  int64_t inside = 0;
  for (int64_t i = 0; i < field.numel(); ++i)
    inside += mask[static_cast<size_t>(i)] = m.data[static_cast<size_t>(i)] > 0.5f;
  // Said here, naming the mask: mask_field's "no voxel inside" names the field.
  if (inside == 0)
    fail(opt.mask_path, ": the mask is empty (no voxel > 0.5); check that it is the right file");
  return mask;
}

}  // namespace

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

void check_options(const InferOptions& opt) {
  if (opt.device != "gpu" && opt.device != "auto" && opt.device != "cpu")
    fail("--device must be auto, cpu or gpu, got '", opt.device, "'");
  if (opt.out_path.empty()) fail("an output path is needed (-o chi.nii.gz)");
  if (opt.scales < 1 || opt.scales > 4) fail("--scales must be 1 to 4, got ", opt.scales);
  if (opt.refine < 0 || opt.refine > kRefineMaxIterations)
    fail("--refine must be 0 to ", kRefineMaxIterations, " iterations, got ", opt.refine);
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
}

InferInputs read_inputs(const InferOptions& opt) {
  InferInputs in;
  in.model_path = opt.model_path.empty() ? default_model_path() : opt.model_path;
  in.model = load_checkpoint(in.model_path, true);
  in.field = read_nifti(opt.field_path);
  if (const std::string odd = field_grid_warning(in.field, opt.field_path); !odd.empty())
    std::cerr << "deepqsm-infer: warning: " << odd << "\n";
  in.unit = field_unit_from_name(opt.units);
  in.to_ppm = to_ppm_factor(in.unit, opt.b0_tesla, opt.te_s);
  in.mask = read_mask(opt, in.field);
  in.masked = mask_field(in.field.data, in.mask, opt.field_path);
  return in;
}

void convert_units(InferInputs& in, const InferOptions& opt) {
  int64_t nonzero = 0, lost = 0;  // voxels != 0 before, and those that became 0 or subnormal
  for (float& v : in.field.data) {
    const bool was = v != 0.0f;
    v = static_cast<float>(v * in.to_ppm);
    if (!std::isfinite(v))
      fail(opt.field_path, ": the field overflows float in ppm (conversion factor ", in.to_ppm,
           "); check --units, --b0 and --te");
    nonzero += was;
    lost += was && !std::isnormal(v);
  }
  if (nonzero > 0 && lost == nonzero)
    fail(opt.field_path, ": the field underflows to 0 in ppm (conversion factor ", in.to_ppm,
         "); check --units, --b0 and --te");
  if (lost > 0)
    std::cerr << "deepqsm-infer: warning: " << lost << " non-zero voxels of " << opt.field_path
              << " underflow to (nearly) 0 in ppm (conversion factor " << in.to_ppm
              << "); check --units, --b0 and --te\n";
  if (in.masked.nan > 0)
    std::cerr << "deepqsm-infer: warning: " << in.masked.nan << " NaN voxels in " << opt.field_path
              << " are treated as outside the mask (output 0 there)\n";

  std::printf("input:  %s, grid %s, voxel %s mm, %lld voxels in the mask\n", opt.field_path.c_str(),
              dims_str(in.field.dims()).c_str(), vec_str(in.field.voxel_mm).c_str(),
              static_cast<long long>(in.masked.inside));
  if (in.unit == FieldUnit::ppm)
    std::printf("units:  ppm (as given)\n");
  else
    std::printf(
        "units:  %s -> ppm, x %.6g (B0 %.4g T%s)\n", opt.units.c_str(), in.to_ppm, opt.b0_tesla,
        in.unit == FieldUnit::rad ? (", TE " + std::to_string(opt.te_s) + " s").c_str() : "");
}

}  // namespace dq
