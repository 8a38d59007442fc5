// `deepqsm synth`: generates synthetic (field, chi) patch pairs with the
// recipe of a config and writes them to an HDF5 patch file (layout in
// synth/patch_file.h), optionally with every full volume as NIfTI and a PNG
// preview of the first volume's central slices.
//
// --config takes either a training config (a JSON object with a "data"
// section; validated like `deepqsm train` does, and its train.seed is the
// default seed, so the file holds exactly the training volumes 0 .. N-1 of
// that run) or a bare recipe (a JSON object whose keys are the recipe keys
// of docs/config.md's "data" table, volume_size to region_size; the seed
// defaults to 1).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "core/cli_checks.h"
#include "core/error.h"
#include "core/io/json_read.h"
#include "core/io/nifti_io.h"
#include "core/io/output_files.h"
#include "core/io/png_io.h"
#include "cuda/device.h"
#include "synth/patch_file.h"
#include "synth/recipe_json.h"
#include "synth/brain.h"
#include "synth/synth.h"
#include "synth/synth_gpu.h"
#include "train/cli/commands.h"
#include "train/config.h"

namespace dq {

namespace {

struct SynthInput {
  Recipe recipe;
  uint64_t seed = 1;
  bool training_config = false;
};

SynthInput load_synth_input(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) fail(path, ": is a directory, not a config file");
  // A device reads without end (/dev/zero); pipes and process substitution are fine.
  if (std::filesystem::is_character_file(path, ec) || std::filesystem::is_block_file(path, ec))
    fail(path, ": is a device, not a config file");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, ": cannot open the config file");
  std::ostringstream text;
  text << in.rdbuf();
  json root;
  try {
    root = parse_json_text(text.str());
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  SynthInput out;
  const bool training = root.is_object() && (root.contains("data") || root.contains("model") ||
                                             root.contains("train") || root.contains("optim"));
  if (training) {
    const TrainConfig cfg = parse_train_config(text.str(), path);
    out.recipe = cfg.data;
    out.seed = cfg.seed;
    out.training_config = true;
    return out;
  }
  try {
    const KeyTable table = {{"data", recipe_keys()}};
    for_each_key(root, "data", table,
                 [&](const std::string& key, const json& v, const std::string& p) {
                   read_recipe_key(out.recipe, key, v, p);
                 });
    out.recipe.validate();
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  return out;
}

std::string volume_name(const std::string& dir, const char* what, int64_t v) {
  char name[64];
  std::snprintf(name, sizeof name, "%s_%04lld.nii.gz", what, static_cast<long long>(v));
  return (std::filesystem::path(dir) / name).string();
}

// chi_0007.nii.gz, field_0012.nii.gz, mask_0000.nii.gz: what --volumes-out writes.
bool named_like_a_volume(const std::string& name) {
  const std::string ext = ".nii.gz";
  for (const std::string prefix : {"chi_", "field_", "mask_"}) {
    if (name.size() <= prefix.size() + ext.size() || name.rfind(prefix, 0) != 0 ||
        name.compare(name.size() - ext.size(), ext.size(), ext) != 0)
      continue;
    const std::string digits = name.substr(prefix.size(), name.size() - prefix.size() - ext.size());
    if (digits.find_first_not_of("0123456789") == std::string::npos) return true;
  }
  return false;
}

// --seed's text as a seed, or `fallback` when it is empty.
uint64_t parse_seed(const std::string& seed_arg, uint64_t fallback) {
  if (seed_arg.empty()) return fallback;
  size_t used = 0;
  uint64_t seed = 0;
  try {
    seed = std::stoull(seed_arg, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != seed_arg.size() || seed_arg[0] == '-')
    fail("--seed: expected an integer in 0 .. 2^64 - 1, got '", seed_arg, "'");
  return seed;
}

// Outputs: --volumes-out must not be a file, and neither it nor its
// chi_/field_/mask_NNNN.nii.gz files may be --out or --preview (they would
// overwrite each other). Outputs elsewhere are checked before that folder
// is made, so a typo leaves nothing behind; those inside it, after.
void check_synth_outputs(const std::string& config, const std::string& out,
                         const std::string& volumes_out, const std::string& preview) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const auto norm = [&ec](const fs::path& p) {
    fs::path a = fs::absolute(p, ec).lexically_normal();
    return a.has_filename() ? a : a.parent_path();  // "vv/" and "vv" alike
  };
  const fs::path folder = volumes_out.empty() ? fs::path() : norm(volumes_out);
  const auto in_folder = [&](const std::string& p) {
    return !volumes_out.empty() && norm(p).parent_path() == folder;
  };
  const std::pair<std::string, const char*> outputs[] = {{out, "--out"}, {preview, "--preview"}};
  if (!volumes_out.empty()) {
    if (fs::exists(volumes_out, ec) && !fs::is_directory(volumes_out, ec))
      fail("--volumes-out ", volumes_out, ": is a file, not a folder");
    for (const auto& [p, flag] : outputs)
      if (!p.empty() && (norm(p) == folder ||
                         (in_folder(p) && named_like_a_volume(fs::path(p).filename().string()))))
        fail(flag, " ", p, ": collides with the volumes --volumes-out writes");
  }
  for (bool inside : {false, true}) {
    if (inside && !volumes_out.empty()) fs::create_directories(volumes_out);
    for (const auto& [p, flag] : outputs)
      if (!p.empty() && in_folder(p) == inside)
        check_output_file(p, flag, {config, p == out ? preview : out});
  }
}

// Volume v's chi, field and (with regions or brains) mask in --volumes-out,
// and for volume 0 the --preview PNG. brain_mask: a brain-shaped volume's
// brain (synth/brain.h), else empty.
void write_volume_files(const Recipe& r, uint64_t seed, int64_t v, const std::vector<float>& chi,
                        const std::vector<float>& field, const std::vector<uint8_t>& brain_mask,
                        const std::string& volumes_out, const std::string& preview) {
  const int64_t n = r.volume_size;
  const Dims3 dims{n, n, n};
  if (!volumes_out.empty()) {
    write_nifti_new(volume_name(volumes_out, "chi", v), chi.data(), n, n, n, r.voxel_mm);
    write_nifti_new(volume_name(volumes_out, "field", v), field.data(), n, n, n, r.voxel_mm);
    if (r.region_prob > 0 || r.brain_prob > 0) {
      // The volume's region or brain (all ones when its coins said whole
      // volume), so the volume can be scored like an in-vivo map, inside its mask.
      std::vector<float> mask(static_cast<size_t>(dims.numel()), 1.0f);
      if (!brain_mask.empty())
        for (size_t m = 0; m < mask.size(); ++m) mask[m] = brain_mask[m];
      else
        apply_region(draw_region(r, seed, v), n, mask.data());
      write_nifti_new(volume_name(volumes_out, "mask", v), mask.data(), n, n, n, r.voxel_mm);
    }
  }
  if (v == 0 && !preview.empty()) {
    const auto wc = robust_window(chi.data(), dims.numel());
    const auto wf = robust_window(field.data(), dims.numel());
    write_slices_png(preview, {{"chi (ppm)", chi.data(), dims, wc.first, wc.second},
                               {"field (ppm)", field.data(), dims, wf.first, wf.second}});
  }
}

// The patch file is stored uncompressed: field and chi, N x P^3 floats each.
// Its temporary must fit beside whatever --out holds now (replaced only at
// the end), so a count that cannot fit is refused before the first volume
// instead of filling the disk (a 900 MB temporary was left behind).
void check_synth_disk(const std::string& out, int64_t volumes, const Recipe& r) {
  namespace fs = std::filesystem;
  const double P = static_cast<double>(r.patch_size);
  const double need = 2.0 * 4.0 * P * P * P * static_cast<double>(r.patches_per_volume) *
                      static_cast<double>(volumes);
  std::error_code ec;
  const fs::path p(out);
  const fs::space_info space = fs::space(p.has_parent_path() ? p.parent_path() : ".", ec);
  if (ec) return;  // no answer (a special file system): the write itself will tell
  const double avail = static_cast<double>(space.available);
  if (need > avail)
    fail("--out ", out, ": ", volumes, " volumes make a patch file of ~", need / 1073741824.0,
         " GiB, but its folder has ", avail / 1073741824.0,
         " GiB free: lower --volumes or write elsewhere");
}

int run_synth(const std::string& config, int64_t volumes, const std::string& out,
              const std::string& volumes_out, const std::string& preview,
              const std::string& seed_arg, const std::string& device, bool quiet) {
  const SynthInput in = load_synth_input(config);
  const Recipe& r = in.recipe;
  const uint64_t seed = parse_seed(seed_arg, in.seed);
  check_synth_outputs(config, out, volumes_out, preview);
  check_synth_disk(out, volumes, r);

  const int64_t n = r.volume_size, P = r.patch_size, per = r.patches_per_volume;
  const Dims3 dims{n, n, n};
  std::vector<float> field(static_cast<size_t>(per * P * P * P)), chi(field.size());
  std::vector<std::array<int64_t, 3>> corners(static_cast<size_t>(per));
  std::vector<float> vol_chi, vol_field;  // full volumes on the GPU path, when needed
  std::vector<uint8_t> vol_mask;          // a brain-shaped volume's brain
  std::unique_ptr<GpuSynth> gpu;
  if (device == "gpu") {
    if (cuda_device_count() == 0) fail("--device gpu: ", cuda_no_device_reason());
    gpu = std::make_unique<GpuSynth>(r, nullptr);
  }
  const bool want_volume = !volumes_out.empty() || !preview.empty();

  if (!quiet)
    std::fprintf(stderr, "synth: %lld volumes of %lld^3 (%s, seed %llu) on the %s -> %s\n",
                 static_cast<long long>(volumes), static_cast<long long>(n),
                 in.training_config ? "training config" : "recipe",
                 static_cast<unsigned long long>(seed), device.c_str(), out.c_str());
  // Every file of the run appears together at the end: a failure or Ctrl-C
  // part-way leaves the outputs of an earlier run as they were, not a mix.
  OutputGroup written;
  PatchFileWriter writer(out, r, seed, volumes);
  const auto t0 = std::chrono::steady_clock::now();
  auto last_report = t0;
  const bool tty = isatty(fileno(stderr));
  for (int64_t v = 0; v < volumes; ++v) {
    for (int p = 0; p < per; ++p)
      corners[static_cast<size_t>(p)] = draw_patch_corner(r, seed, v, p);
    Vec3 b0;
    vol_mask.clear();
    if (gpu && !volume_is_brain(r, seed, v)) {  // brain-shaped volumes: the CPU generator
      b0 = gpu->generate(seed, v);
      gpu->cut_patches_to_host(seed, v, static_cast<int>(per), field.data(), chi.data());
      if (want_volume) {
        vol_chi.resize(static_cast<size_t>(dims.numel()));
        vol_field.resize(vol_chi.size());
        gpu->download(vol_chi.data(), vol_field.data());
      }
    } else {
      SynthVolume sv = generate_volume(r, seed, v);
      cut_patches(r, sv, seed, v, static_cast<int>(per), field.data(), chi.data());
      b0 = sv.b0;
      vol_chi = std::move(sv.chi);
      vol_field = std::move(sv.field);
      vol_mask = std::move(sv.mask);
    }
    writer.write_volume(v, field.data(), chi.data(), corners.data(), b0);
    write_volume_files(r, seed, v, vol_chi, vol_field, vol_mask, volumes_out, preview);
    const auto now = std::chrono::steady_clock::now();
    const double s = std::chrono::duration<double>(now - t0).count();
    const bool last = v + 1 == volumes;
    if (!quiet && (last || std::chrono::duration<double>(now - last_report).count() >= 1.0)) {
      last_report = now;
      std::fprintf(stderr, "%ssynth: %lld/%lld volumes, %.2f volumes/s, %.1f patches/s%s",
                   tty ? "\r\033[K" : "", static_cast<long long>(v + 1),
                   static_cast<long long>(volumes), (v + 1) / s, (v + 1) * per / s,
                   tty && !last ? "" : "\n");
    }
  }
  writer.close();
  written.commit();
  std::printf("wrote %lld (field, chi) patch pairs of %lld^3 to %s\n",
              static_cast<long long>(volumes * per), static_cast<long long>(P), out.c_str());
  if (!volumes_out.empty())
    std::printf("volumes: %s/{chi,field%s}_0000.nii.gz ... (%lld each)\n", volumes_out.c_str(),
                r.region_prob > 0 || r.brain_prob > 0 ? ",mask" : "", static_cast<long long>(volumes));
  if (!preview.empty()) std::printf("preview: %s\n", preview.c_str());
  return 0;
}

}  // namespace

Command add_synth_command(CLI::App& app) {
  struct Opts {
    std::string config, out, volumes_out, preview, seed, device = "cpu";
    int64_t volumes = 0;
    bool quiet = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* cmd = app.add_subcommand(
      "synth", "Generate synthetic (field, chi) patch pairs (ppm) and write them to HDF5.");
  cmd->footer(
      "--config is a training config (its \"data\" section is the recipe and train.seed the\n"
      "default seed) or a bare recipe: a JSON object of the recipe keys of \"data\"\n"
      "(volume_size ... region_size, docs/config.md).\n"
      "The HDF5 file holds float32 datasets \"field\" and \"chi\" of shape (N, P, P, P) in ppm,\n"
      "N = volumes x patches_per_volume, plus \"volume\", \"corner\" and \"b0_dir\" per patch and\n"
      "the attributes recipe (JSON), voxel_mm, b0_dir and seed (layout: synth/patch_file.h).\n"
      "Example: deepqsm synth --config configs/deepqsm-paper.json --volumes 10 --out p.h5");
  cmd->add_option("--config", o->config, "Training config or recipe JSON")
      ->required()
      ->check(CLI::ExistingFile);
  cmd->add_option("--volumes", o->volumes, "Volumes to generate (volume indices 0 .. N-1)")
      ->required()
      ->transform(cli::int_range(1, int64_t{1} << 40));
  cmd->add_option("--out", o->out, "HDF5 patch file to write")->required();
  cmd->add_option("--volumes-out", o->volumes_out,
                  "Also write chi_XXXX.nii.gz and field_XXXX.nii.gz for every volume here (and "
                  "mask_XXXX.nii.gz, its region, when region_prob > 0)");
  cmd->add_option("--preview", o->preview,
                  "Also draw the first volume's central slices to this PNG");
  cmd->add_option("--seed", o->seed,
                  "Data seed (default: train.seed of a training config, else 1)");
  cmd->add_option("--device", o->device, "Generator: cpu or gpu")
      ->capture_default_str()
      ->check(CLI::IsMember({"cpu", "gpu"}));
  cmd->add_flag("--quiet", o->quiet, "No progress lines on stderr");
  return {cmd, [o]() {
            return run_synth(o->config, o->volumes, o->out, o->volumes_out, o->preview, o->seed,
                             o->device, o->quiet);
          }};
}

}  // namespace dq
