// The generator recipe's JSON keys (the "data" section of a training config,
// and the config of `deepqsm synth`): reading one key, and writing them all.
#pragma once
#include <string>
#include <vector>

#include "core/io/json_read.h"
#include "synth/recipe.h"

namespace dq {

// The recipe's keys, in documented order.
const std::vector<std::string>& recipe_keys();
// Reads `key` into the recipe; returns false if it is not a recipe key.
bool read_recipe_key(Recipe& r, const std::string& key, const json& v, const std::string& path);
// All recipe keys with their values, in documented order.
nlohmann::ordered_json recipe_to_json(const Recipe& r);

}  // namespace dq
