#include "synth/recipe_json.h"

#include <cmath>
#include <tuple>

#include "core/error.h"

namespace dq {

const std::vector<std::string>& recipe_keys() {
  static const std::vector<std::string> keys = {
      "volume_size",        "cubes",       "spheres",    "size",        "chi",        "patch_size",
      "patches_per_volume", "voxel_mm",    "b0_dir",     "dipole_k0",   "pad",        "rectangles",
      "additive",           "chi_dist",    "chi_mean",   "chi_std",     "chi_values", "b0_cone_deg",
      "noise_std",          "lesion_prob", "lesion_chi", "region_prob", "region_size",
      "brain_prob",         "brain_templates", "brain_flip", "brain_rotate_deg", "brain_scale",
      "brain_shift_mm",     "brain_warp_mm", "brain_texture", "brain_veins", "brain_shapes",
      "brain_shape_mm",     "brain_lesion_prob", "brain_lesion_chi", "brain_background",
      "aniso_prob",         "aniso_factor"};
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
  } else if (key == "rectangles") {
    std::tie(r.rects_min, r.rects_max) = read_int_range(v, path);
  } else if (key == "additive") {
    r.additive = read_bool(v, path);
  } else if (key == "chi_dist") {
    r.chi_dist = read_string(v, path);
  } else if (key == "chi_mean") {
    r.chi_mean = read_number(v, path);
  } else if (key == "chi_std") {
    r.chi_std = read_number(v, path);
  } else if (key == "chi_values") {
    if (!v.is_array()) fail(path, ": expected an array of numbers (ppm), got ", type_phrase(v));
    r.chi_values.clear();
    for (size_t i = 0; i < v.size(); ++i)
      r.chi_values.push_back(read_number(v[i], path + "[" + std::to_string(i) + "]"));
  } else if (key == "b0_cone_deg") {
    r.b0_cone_deg = read_number(v, path);
  } else if (key == "noise_std") {
    if (v.is_array()) {
      std::tie(r.noise_std, r.noise_std_max) = read_range(v, path);
      // Recipe keeps max 0 for "one level", so [0.01, 0] would read as 0.01.
      check(r.noise_std <= r.noise_std_max, path, "[min, max] with min <= max",
            "[" + num(r.noise_std) + ", " + num(r.noise_std_max) + "]");
    } else
      r.noise_std = read_number(v, path);
  } else if (key == "lesion_prob") {
    r.lesion_prob = read_number(v, path);
  } else if (key == "lesion_chi") {
    std::tie(r.lesion_chi_min, r.lesion_chi_max) = read_range(v, path);
  } else if (key == "region_prob") {
    r.region_prob = read_number(v, path);
  } else if (key == "region_size") {
    std::tie(r.region_size_min, r.region_size_max) = read_range(v, path);
  } else if (key == "brain_prob") {
    r.brain_prob = read_number(v, path);
  } else if (key == "brain_templates") {
    r.brain_templates = read_string(v, path);
  } else if (key == "brain_flip") {
    r.brain_flip = read_number(v, path);
  } else if (key == "brain_rotate_deg") {
    r.brain_rotate_deg = read_number(v, path);
  } else if (key == "brain_scale") {
    std::tie(r.brain_scale_min, r.brain_scale_max) = read_range(v, path);
  } else if (key == "brain_shift_mm") {
    r.brain_shift_mm = read_number(v, path);
  } else if (key == "brain_warp_mm") {
    r.brain_warp_mm = read_number(v, path);
  } else if (key == "brain_texture") {
    r.brain_texture = read_number(v, path);
  } else if (key == "brain_veins") {
    std::tie(r.brain_veins_min, r.brain_veins_max) = read_int_range(v, path);
  } else if (key == "brain_shapes") {
    std::tie(r.brain_shapes_min, r.brain_shapes_max) = read_int_range(v, path);
  } else if (key == "brain_shape_mm") {
    std::tie(r.brain_shape_mm_min, r.brain_shape_mm_max) = read_range(v, path);
  } else if (key == "brain_lesion_prob") {
    r.brain_lesion_prob = read_number(v, path);
  } else if (key == "brain_lesion_chi") {
    std::tie(r.brain_lesion_chi_min, r.brain_lesion_chi_max) = read_range(v, path);
  } else if (key == "brain_background") {
    r.brain_background = read_number(v, path);
  } else if (key == "aniso_prob") {
    r.aniso_prob = read_number(v, path);
  } else if (key == "aniso_factor") {
    std::tie(r.aniso_factor_min, r.aniso_factor_max) = read_range(v, path);
  } else {
    return false;
  }
  return true;
}

nlohmann::ordered_json recipe_to_json(const Recipe& r) {
  using json = nlohmann::ordered_json;
  const json noise = r.noise_std_max > r.noise_std ? json::array({r.noise_std, r.noise_std_max})
                                                   : json(r.noise_std);
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
          {"pad", r.pad},
          {"rectangles", {r.rects_min, r.rects_max}},
          {"additive", r.additive},
          {"chi_dist", r.chi_dist},
          {"chi_mean", r.chi_mean},
          {"chi_std", r.chi_std},
          {"chi_values", r.chi_values},
          {"b0_cone_deg", r.b0_cone_deg},
          {"noise_std", noise},
          {"lesion_prob", r.lesion_prob},
          {"lesion_chi", {r.lesion_chi_min, r.lesion_chi_max}},
          {"region_prob", r.region_prob},
          {"region_size", {r.region_size_min, r.region_size_max}},
          {"brain_prob", r.brain_prob},
          {"brain_templates", r.brain_templates},
          {"brain_flip", r.brain_flip},
          {"brain_rotate_deg", r.brain_rotate_deg},
          {"brain_scale", {r.brain_scale_min, r.brain_scale_max}},
          {"brain_shift_mm", r.brain_shift_mm},
          {"brain_warp_mm", r.brain_warp_mm},
          {"brain_texture", r.brain_texture},
          {"brain_veins", {r.brain_veins_min, r.brain_veins_max}},
          {"brain_shapes", {r.brain_shapes_min, r.brain_shapes_max}},
          {"brain_shape_mm", {r.brain_shape_mm_min, r.brain_shape_mm_max}},
          {"brain_lesion_prob", r.brain_lesion_prob},
          {"brain_lesion_chi", {r.brain_lesion_chi_min, r.brain_lesion_chi_max}},
          {"brain_background", r.brain_background},
          {"aniso_prob", r.aniso_prob},
          {"aniso_factor", {r.aniso_factor_min, r.aniso_factor_max}}};
}

}  // namespace dq
