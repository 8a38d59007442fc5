// `deepqsm proxy CASE`: writes one of the in-vivo proxy cases (synth/brain.h's
// make_brain_proxy): the MNI152 2009 brain under a held-out deformation with
// literature chi values, its local field, brain mask and deep-nuclei labels.
// No training volume can be one of them (the geometry is keyed by
// kProxyPurpose, a branch of the seed tree the training sampler never uses).
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include "core/cli_checks.h"
#include "core/error.h"
#include "core/io/nifti_io.h"
#include "core/io/output_files.h"
#include "core/nn/philox.h"
#include "synth/brain.h"
#include "synth/synth.h"
#include "train/cli/commands.h"

namespace dq {

Command add_proxy_command(CLI::App& app) {
  struct Opts {
    int which = 1;
    std::string field, chi, mask, labels, templates;
    double noise_std = 0;
    uint64_t seed = 1;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand(
      "proxy",
      "Write an in-vivo proxy case: the MNI152 brain under a held-out deformation with literature "
      "chi, its local field (ppm, B0 along z), and optionally chi, mask and nuclei labels.");
  cmd->footer(
      "160^3 voxels of 1 mm. chi (ppm, relative to CSF): white matter -0.03, cortex 0.02,\n"
      "caudate 0.06, putamen 0.05, globus pallidus 0.17, thalamus 0.01, substantia nigra 0.14,\n"
      "red nucleus 0.10, dentate 0.10, veins 0.30-0.45; case 2 adds a 1.2 ppm haemorrhage.\n"
      "Labels: 1 caudate, 2 putamen, 3 globus pallidus, 4 thalamus, 5 substantia nigra,\n"
      "6 red nucleus, 7 dentate. Needs scripts/prepare-templates.sh. See docs/config.md.");
  cmd->add_option("case", o->which, "Proxy case, 1 or 2")
      ->required()
      ->transform(cli::int_range(1, kProxyCases));
  cmd->add_option("-o,--output", o->field, "Field map to write (.nii or .nii.gz), ppm")->required();
  cmd->add_option("--chi", o->chi, "Also write the true chi map here (ppm)");
  cmd->add_option("--mask", o->mask, "Also write the brain mask here (0/1)");
  cmd->add_option("--labels", o->labels, "Also write the deep-nuclei labels here (0-7)");
  cmd->add_option("--templates", o->templates,
                  "Folder of the MNI152 templates (default: $DEEPQSM_TEMPLATES, else "
                  "data/mni152-2009 in the source tree)");
  cmd->add_option("--noise-std", o->noise_std, "White Gaussian noise added to the field, ppm")
      ->capture_default_str();
  cmd->add_option("--seed", o->seed, "Seed of the noise")
      ->capture_default_str()
      ->transform(cli::uint64_any());
  return {cmd, [o]() {
            if (!(o->noise_std >= 0) || !(o->noise_std <= 1.0))
              fail("--noise-std must be from 0 to 1 ppm, got ", o->noise_std);
            check_nifti_output(o->field, "-o", {o->chi, o->mask, o->labels});
            if (!o->chi.empty()) check_nifti_output(o->chi, "--chi", {o->mask, o->labels});
            if (!o->mask.empty()) check_nifti_output(o->mask, "--mask", {o->labels});
            if (!o->labels.empty()) check_nifti_output(o->labels, "--labels");
            Recipe r;
            r.brain_templates = o->templates;
            BrainProxy p = make_brain_proxy(o->which, brain_templates_dir(r));
            const uint64_t key = key_for(o->seed, 0x50524F584E4Full);  // "PROXNO": the noise
            if (o->noise_std > 0)
              for (size_t i = 0; i < p.field.size(); ++i)
                if (p.mask[i]) p.field[i] += static_cast<float>(o->noise_std * synth_gauss(key, i));
            const int64_t n = p.n;
            OutputGroup outputs;
            write_nifti_new(o->field, p.field.data(), n, n, n, p.voxel_mm);
            if (!o->chi.empty()) write_nifti_new(o->chi, p.chi.data(), n, n, n, p.voxel_mm);
            if (!o->mask.empty()) {
              const std::vector<float> m(p.mask.begin(), p.mask.end());
              write_nifti_new(o->mask, m.data(), n, n, n, p.voxel_mm);
            }
            if (!o->labels.empty()) {
              const std::vector<float> l(p.labels.begin(), p.labels.end());
              write_nifti_new(o->labels, l.data(), n, n, n, p.voxel_mm);
            }
            outputs.commit();
            std::vector<int64_t> count(kNuclei + 1, 0);
            for (uint8_t l : p.labels) ++count[l];
            std::printf("proxy case %d: %s (%lld^3, 1 mm, ppm, B0 along z", o->which,
                        o->field.c_str(), static_cast<long long>(n));
            if (o->noise_std > 0)
              std::printf(", noise %.4g ppm, seed %llu", o->noise_std,
                          static_cast<unsigned long long>(o->seed));
            std::printf(")\nnuclei (voxels):");
            for (int l = 1; l <= kNuclei; ++l)
              std::printf(" %d %s %lld%s", l, nucleus_name(l),
                          static_cast<long long>(count[size_t(l)]), l < kNuclei ? "," : "\n");
            return 0;
          }};
}

}  // namespace dq
