// `deepqsm phantom`: writes the head-like susceptibility phantom
// (core/qsm/phantom.h) and its local field as NIfTI, for demos and tests when no
// measured field map is at hand.
#include <cmath>
#include <cstdio>
#include <memory>
#include <string>

#include "core/cli_checks.h"
#include "core/error.h"
#include "core/io/nifti_io.h"
#include "core/io/output_files.h"
#include "core/nn/philox.h"
#include "core/qsm/phantom.h"
#include "synth/synth.h"
#include "train/cli/commands.h"

namespace dq {

Command add_phantom_command(CLI::App& app) {
  struct Opts {
    std::string field, chi, mask;
    int64_t size = 160;
    double noise_std = 0;
    uint64_t seed = 1;
    uint64_t detail = 0;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand("phantom",
                                     "Write a head-like chi phantom's local field (ppm, B0 along "
                                     "z), and optionally chi and mask.");
  cmd->footer(
      "Ellipsoids with literature chi values (ppm, relative to CSF): grey matter 0.02, white\n"
      "matter -0.03, CSF 0, caudate 0.06, putamen 0.05, globus pallidus 0.17, thalamus 0.01,\n"
      "substantia nigra 0.14, red nucleus 0.10, veins 0.35 (references in core/qsm/phantom.cpp).\n"
      "The field of view is 160 mm, so --size sets the voxel size (160 / size mm).");
  cmd->add_option("-o,--output", o->field, "Field map to write (.nii or .nii.gz), ppm")->required();
  cmd->add_option("--chi", o->chi, "Also write the true chi map here (ppm)");
  cmd->add_option("--mask", o->mask, "Also write the brain mask here (0/1)");
  cmd->add_option("--size", o->size, "Voxels per side")
      ->capture_default_str()
      ->transform(cli::int_range(16, 512));
  cmd->add_option("--noise-std", o->noise_std,
                  "White Gaussian noise added to the field, ppm (a measured field's noise is "
                  "about 0.001-0.005 ppm at 3 T)")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the noise")
      ->capture_default_str()
      ->transform(cli::uint64_any());
  cmd->add_option("--detail", o->detail,
                  "Add in-vivo-like fine structure drawn from this seed (0 = none): a folded "
                  "white-matter surface, sulci (CSF), +-0.01 ppm tissue texture and 80 small "
                  "veins (0.25-0.45 ppm, 0.5-1.25 mm radius) in every direction")
      ->capture_default_str()
      ->transform(cli::uint64_any());
  return {cmd, [o]() {
            if (!(o->noise_std >= 0) || !(o->noise_std <= 1.0))
              fail("--noise-std must be from 0 to 1 ppm, got ", o->noise_std);
            check_nifti_output(o->field, "-o", {o->chi, o->mask});
            if (!o->chi.empty()) check_nifti_output(o->chi, "--chi", {o->mask});
            if (!o->mask.empty()) check_nifti_output(o->mask, "--mask");
            Phantom p = make_head_phantom(o->size, o->detail);
            // The noise stream: the synthetic generator's Box-Muller draws
            // under a key of its own.
            const uint64_t key = key_for(o->seed, 0x5048414E544F4Dull);  // "PHANTOM"
            if (o->noise_std > 0)
              for (size_t i = 0; i < p.field.size(); ++i)
                p.field[i] += static_cast<float>(o->noise_std * synth_gauss(key, i));
            const Dims3& d = p.dims;
            // The files of one phantom appear together: a failure part-way
            // (full disk) leaves an earlier field, chi and mask as they were.
            OutputGroup outputs;
            write_nifti_new(o->field, p.field.data(), d.nx, d.ny, d.nz, p.voxel_mm);
            if (!o->chi.empty())
              write_nifti_new(o->chi, p.chi.data(), d.nx, d.ny, d.nz, p.voxel_mm);
            if (!o->mask.empty()) {
              const std::vector<float> m(p.mask.begin(), p.mask.end());
              write_nifti_new(o->mask, m.data(), d.nx, d.ny, d.nz, p.voxel_mm);
            }
            outputs.commit();
            std::printf("field: %s (%lldx%lldx%lld, %.4g mm, ppm, B0 along z", o->field.c_str(),
                        static_cast<long long>(d.nx), static_cast<long long>(d.ny),
                        static_cast<long long>(d.nz), p.voxel_mm[0]);
            if (o->detail != 0)
              std::printf(", detail seed %llu", static_cast<unsigned long long>(o->detail));
            if (o->noise_std > 0)
              std::printf(", noise %.4g ppm, seed %llu", o->noise_std,
                          static_cast<unsigned long long>(o->seed));
            std::printf(")\n");
            if (!o->chi.empty()) std::printf("chi:   %s (ppm)\n", o->chi.c_str());
            if (!o->mask.empty()) std::printf("mask:  %s\n", o->mask.c_str());
            return 0;
          }};
}

}  // namespace dq
