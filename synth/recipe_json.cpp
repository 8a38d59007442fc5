#include "synth/recipe_json.h"

#include <cmath>
#include <tuple>

#include "core/error.h"

namespace dq {

const std::vector<std::string>& recipe_keys() {
  static const std::vector<std::string> keys = {
      "volume_size", "cubes",    "spheres", "size",      "chi", "patch_size", "patches_per_volume",
      "voxel_mm",    "b0_dir",   "dipole_k0", "pad"};
  return keys;
}

bool read_recipe_key(Recipe& r, const std::string& key, const json& v, const std::string& path) {
  if (key == "volume_size") {
    r.volume_size = read_int(v, path);
  } else if (key == "cubes") {
    std::tie(r.cubes_min, r.cubes_max) = read_int_range(v, path);
  } else if (key == "spheres") {
    std::tie(r.spheres_min, r.spheres_max) = read_int_range(v, path);
  } else if (key == "size") {
    std::tie(r.size_min, r.size_max) = read_range(v, path);
  } else if (key == "chi") {
    std::tie(r.chi_min, r.chi_max) = read_range(v, path);
  } else if (key == "patch_size") {
    r.patch_size = read_int(v, path);
  } else if (key == "patches_per_volume") {
    r.patches_per_volume = read_int32(v, path);
  } else if (key == "voxel_mm") {
    r.voxel_mm = read_vec3(v, path);
  } else if (key == "b0_dir") {
    auto b = read_vec3(v, path);
    const double n = std::sqrt(b[0] * b[0] + b[1] * b[1] + b[2] * b[2]);
    if (!(n > 0) || !std::isfinite(n)) fail(path, ": must be a non-zero direction, got ", v.dump());
    r.b0_dir = {b[0] / n, b[1] / n, b[2] / n};
  } else if (key == "dipole_k0") {
    r.dipole_k0 = read_number(v, path);
  } else if (key == "pad") {
    r.pad = read_int(v, path);
  } else {
    return false;
  }
  return true;
}

nlohmann::ordered_json recipe_to_json(const Recipe& r) {
  return {{"volume_size", r.volume_size},
          {"cubes", {r.cubes_min, r.cubes_max}},
          {"spheres", {r.spheres_min, r.spheres_max}},
          {"size", {r.size_min, r.size_max}},
          {"chi", {r.chi_min, r.chi_max}},
          {"patch_size", r.patch_size},
          {"patches_per_volume", r.patches_per_volume},
          {"voxel_mm", r.voxel_mm},
          {"b0_dir", r.b0_dir},
          {"dipole_k0", r.dipole_k0},
          {"pad", r.pad}};
}

}  // namespace dq
