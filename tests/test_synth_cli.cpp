// `deepqsm synth` end to end: the HDF5 patch file has the documented layout
// (synth/patch_file.h) and holds exactly generate_patches' patches; NIfTI
// volumes carry the voxel size; invalid recipes end with one stderr line and
// exit status 1, leaving no file behind.
#include <hdf5.h>
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "core/io/h5io.h"
#include "core/io/nifti_io.h"
#include "synth/recipe_json.h"
#include "synth/synth.h"
#include "tests/test_util.h"

namespace {

using namespace dq::test;

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using Catch::Matchers::StartsWith;

// A (3,) float64 attribute of the root group, read with the plain HDF5 API
// as h5py would see it.
Run run(const TempDir& dir, const std::string& args) {
  return run_program(dir, DEEPQSM_BINARY, args);
}

std::vector<double> vec3_attr(const std::string& file, const char* name) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  REQUIRE(f >= 0);
  const hid_t a = H5Aopen(f, name, H5P_DEFAULT);
  REQUIRE(a >= 0);
  const hid_t space = H5Aget_space(a);
  hsize_t dims[1] = {0};
  CHECK(H5Sget_simple_extent_ndims(space) == 1);
  H5Sget_simple_extent_dims(space, dims, nullptr);
  std::vector<double> v(dims[0]);
  CHECK(H5Aread(a, H5T_NATIVE_DOUBLE, v.data()) >= 0);
  H5Sclose(space);
  H5Aclose(a);
  H5Fclose(f);
  return v;
}

uint64_t seed_attr(const std::string& file) {
  const hid_t f = H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  REQUIRE(f >= 0);
  const hid_t a = H5Aopen(f, "seed", H5P_DEFAULT);
  REQUIRE(a >= 0);
  uint64_t s = 0;
  CHECK(H5Aread(a, H5T_NATIVE_UINT64, &s) >= 0);
  H5Aclose(a);
  H5Fclose(f);
  return s;
}

const char* kTinyRecipe = R"({
  "volume_size": 24, "cubes": [2, 4], "spheres": [2, 4], "patch_size": 8,
  "patches_per_volume": 3, "voxel_mm": [1.0, 1.0, 1.5], "rectangles": [1, 2]
})";

}  // namespace

TEST_CASE("synth writes the documented HDF5 layout", "[synth_cli]") {
  TempDir dir("deepqsm-synth");
  const std::string cfg = dir.write("recipe.json", kTinyRecipe);
  const std::string out = (dir.path / "patches.h5").string();
  const std::string vols = (dir.path / "vols").string();
  const std::string png = (dir.path / "preview.png").string();
  const Run r = run(dir, "synth --config '" + cfg + "' --volumes 2 --out '" + out +
                             "' --seed 11 --volumes-out '" + vols + "' --preview '" + png + "'");
  INFO("stderr: " << r.err);
  REQUIRE(r.code() == 0);
  CHECK_THAT(r.err, Contains("volumes/s"));
  CHECK_THAT(r.out, Contains("wrote 6 (field, chi) patch pairs"));

  dq::Recipe recipe;
  const dq::json parsed = dq::json::parse(kTinyRecipe);
  for (const auto& [key, value] : parsed.items())
    REQUIRE(dq::read_recipe_key(recipe, key, value, key));
  const dq::PatchSet want = dq::generate_patches(recipe, 11, 0, 2);

  dq::H5File f(out, dq::H5File::Mode::read);
  std::vector<int64_t> dims;
  const std::vector<float> field = f.read_floats("field", &dims);
  CHECK(dims == std::vector<int64_t>{6, 8, 8, 8});
  const std::vector<float> chi = f.read_floats("chi", &dims);
  CHECK(dims == std::vector<int64_t>{6, 8, 8, 8});
  REQUIRE(field.size() == static_cast<size_t>(want.field.numel()));
  CHECK(std::memcmp(field.data(), want.field.f32(), want.field.nbytes()) == 0);
  CHECK(std::memcmp(chi.data(), want.chi.f32(), want.chi.nbytes()) == 0);
  CHECK(f.read_int64s("volume", &dims) == std::vector<int64_t>{0, 0, 0, 1, 1, 1});
  const std::vector<int64_t> corner = f.read_int64s("corner", &dims);
  CHECK(dims == std::vector<int64_t>{6, 3});
  const auto c = dq::draw_patch_corner(recipe, 11, 1, 2);
  CHECK(std::vector<int64_t>(corner.begin() + 15, corner.end()) ==
        std::vector<int64_t>(c.begin(), c.end()));
  CHECK(f.dims("b0_dir") == std::vector<int64_t>{6, 3});

  CHECK(dq::json::parse(f.attr_string("/", "recipe")) == dq::json(dq::recipe_to_json(recipe)));
  CHECK(f.attr_string("/", "units") == "ppm");
  CHECK(f.attr_int("/", "patch_size") == 8);
  CHECK(vec3_attr(out, "voxel_mm") == std::vector<double>{1.0, 1.0, 1.5});
  CHECK(vec3_attr(out, "b0_dir") == std::vector<double>{0.0, 0.0, 1.0});
  CHECK(seed_attr(out) == 11);

  // Full volumes as NIfTI, with the voxel size in the header.
  const dq::Volume v = dq::read_nifti(vols + "/chi_0001.nii.gz");
  CHECK(v.nx == 24);
  CHECK(v.voxel_mm[2] == Approx(1.5));
  const dq::SynthVolume sv = dq::generate_volume(recipe, 11, 1);
  CHECK(v.data == sv.chi);
  CHECK(fs::exists(vols + "/field_0000.nii.gz"));
  CHECK_FALSE(fs::exists(vols + "/mask_0000.nii.gz"));  // no region in this recipe
  CHECK(slurp(png).substr(1, 3) == "PNG");
  // Nothing but the results: no temporary file left.
  for (const auto& e : fs::directory_iterator(dir.path))
    CHECK(e.path().filename().string().find(".tmp") == std::string::npos);
}

TEST_CASE("synth --volumes-out writes each volume's region mask", "[synth_cli]") {
  TempDir dir("deepqsm-synth");
  std::string recipe_text = kTinyRecipe;
  recipe_text.insert(recipe_text.rfind('}'), R"(, "region_prob": 0.5)");
  const std::string cfg = dir.write("recipe.json", recipe_text);
  const std::string vols = (dir.path / "vols").string();
  const Run r =
      run(dir, "synth --quiet --config '" + cfg + "' --volumes 6 --out '" +
                   (dir.path / "p.h5").string() + "' --seed 3 --volumes-out '" + vols + "'");
  INFO("stderr: " << r.err);
  REQUIRE(r.code() == 0);
  CHECK_THAT(r.out, Contains("{chi,field,mask}"));
  dq::Recipe recipe;
  const dq::json parsed = dq::json::parse(recipe_text);
  for (const auto& [key, value] : parsed.items())
    REQUIRE(dq::read_recipe_key(recipe, key, value, key));
  int regions = 0;
  for (int v = 0; v < 6; ++v) {
    char name[32];
    std::snprintf(name, sizeof name, "/mask_%04d.nii.gz", v);
    const dq::Volume m = dq::read_nifti(vols + name);
    const dq::Volume field = dq::read_nifti(vols + std::string(name).replace(1, 4, "field"));
    const dq::SynthRegion g = dq::draw_region(recipe, 3, v);
    regions += g.active;
    for (int64_t k = 0; k < 24; ++k)
      for (int64_t j = 0; j < 24; ++j)
        for (int64_t i = 0; i < 24; ++i) {
          const size_t at = static_cast<size_t>((k * 24 + j) * 24 + i);
          REQUIRE(m.data[at] == (dq::region_contains(g, i, j, k) ? 1.0f : 0.0f));
          if (m.data[at] == 0.0f) REQUIRE(field.data[at] == 0.0f);
        }
  }
  CHECK(regions > 0);  // seed 3 draws both kinds among the six
  CHECK(regions < 6);
}

TEST_CASE("synth stopped by SIGTERM leaves no partial output", "[synth_cli]") {
  TempDir dir("deepqsm-synth");
  std::string recipe_text = kTinyRecipe;
  recipe_text.replace(recipe_text.find("24"), 2, "64");
  const std::string cfg = dir.write("recipe.json", recipe_text);
  const std::string out = dir.write("p.h5", "old"), vols = dir.file("vols");
  // Far more volumes than two seconds make; timeout(1) sends SIGTERM.
  const Run r =
      run_program(dir, "timeout",
                  "-s TERM 2 '" + std::string(DEEPQSM_BINARY) + "' synth --quiet --config '" + cfg +
                      "' --volumes 100000 --out '" + out + "' --volumes-out '" + vols + "'");
  INFO("stderr: " << r.err);
  CHECK(r.code() == 124);  // timed out, i.e. stopped by the signal
  CHECK(slurp(out) == "old");
  REQUIRE(fs::is_directory(vols));
  CHECK(fs::is_empty(vols));
  for (const auto& e : fs::directory_iterator(dir.path))
    CHECK(e.path().filename().string().find(".tmp") == std::string::npos);
}

TEST_CASE("synth reads a training config's data section and seed", "[synth_cli]") {
  TempDir dir("deepqsm-synth");
  const std::string cfg = std::string(DEEPQSM_SOURCE_DIR) + "/configs/test-tiny.json";
  const std::string out = (dir.path / "p.h5").string();
  const Run r = run(dir, "synth --quiet --config '" + cfg + "' --volumes 1 --out '" + out + "'");
  INFO("stderr: " << r.err);
  REQUIRE(r.code() == 0);
  CHECK(r.err.empty());
  CHECK(seed_attr(out) == 7);  // train.seed of test-tiny.json
  dq::H5File f(out, dq::H5File::Mode::read);
  CHECK(f.dims("chi") == std::vector<int64_t>{4, 16, 16, 16});
}

TEST_CASE("synth refuses invalid recipes with one line", "[synth_cli]") {
  TempDir dir("deepqsm-synth");
  struct Case {
    const char* text;
    const char* key;
  };
  const Case cases[] = {
      {R"({"size": [0.5, 0.2]})", "data.size"},
      {R"({"volume_size": 32, "patch_size": 64})", "data.patch_size"},
      {R"({"cubes": [0, 0], "spheres": [0, 0]})", "empty counts"},
      {R"({"chi_dist": "cauchy"})", "data.chi_dist"},
      {R"({"noise_std": -1})", "data.noise_std"},
      {R"({"noise_std": [0.01, 0.001]})", "data.noise_std"},
      {R"({"noise_std": [0.001]})", "data.noise_std"},
      {R"({"noise_std": [0.01, 0]})", "data.noise_std"},  // max 0 once read as "no range"
      {R"({"chi_std": -1})", "data.chi_std"},             // checked whatever chi_dist is
      {R"({"chi": [-1e38, 1e38]})", "beyond +-100 ppm"},  // overflowed into NaN volumes
      {R"({"volume_size": 32, "volume_size": 64})", "volume_size: duplicate key"},
      {"{\n  \"cubes\": [1, 2],\n}", "invalid JSON at line 3"},
      {R"({"sise": [0.1, 0.2]})", "data.sise"},
      {R"({"data": {"b0_cone_deg": 200}})", "data.b0_cone_deg"},
  };
  int i = 0;
  for (const Case& c : cases) {
    const std::string cfg = dir.write("bad" + std::to_string(i++) + ".json", c.text);
    const std::string out = (dir.path / "never.h5").string();
    const Run r = run(dir, "synth --config '" + cfg + "' --volumes 1 --out '" + out + "'");
    INFO(c.text << " -> stderr: " << r.err);
    CHECK(r.code() == 1);
    CHECK_THAT(r.err, StartsWith("deepqsm: ") && Contains(c.key));
    CHECK(r.err.find('\n') == r.err.size() - 1);
    CHECK_FALSE(fs::exists(out));
  }
  const Run r =
      run(dir, "synth --config '" + dir.write("ok.json", "{}") + "' --volumes 0 --out x.h5");
  CHECK(r.code() != 0);
  // Outputs that would overwrite each other.
  const std::string tiny = std::string(DEEPQSM_SOURCE_DIR) + "/configs/test-tiny.json";
  const std::string vols = (dir.path / "vols").string();
  for (const std::string& clash : {vols, vols + "/chi_0000.nii.gz"}) {
    const Run c = run(dir, "synth --config '" + tiny + "' --volumes 1 --out '" + clash +
                               "' --volumes-out '" + vols + "/'");
    INFO(c.err);
    CHECK(c.code() == 1);
    CHECK_THAT(c.err, Contains("collides with the volumes"));
  }
}
