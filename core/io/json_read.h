// Strict JSON reading for configs: every value is read with its expected
// type, and every failure names the key's full path ("optim.lr: expected a
// number, got a string"). A misspelt key silently falling back to its
// default would train the wrong model for hours, so unknown keys are refused
// too, with a suggestion drawn from the table of known keys.
#pragma once
#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

namespace dq {

using json = nlohmann::json;

// Parses a config's text, refusing duplicate keys ("data.cubes: duplicate
// key"; nlohmann would keep the last one silently) and wording syntax errors
// with their line and column ("invalid JSON at line 3, column 5: ...").
json parse_json_text(const std::string& text);

// Known keys by section ("" is the top level), for unknown-key messages.
using KeyTable = std::vector<std::pair<std::string, std::vector<std::string>>>;

std::string join_path(const std::string& section, const std::string& key);
std::string type_phrase(const json& v);  // "a string", "an integer", ...

double read_number(const json& v, const std::string& path);
// Integers must be integers; a float with an integral value (1e5) is accepted.
int64_t read_int(const json& v, const std::string& path);
int read_int32(const json& v, const std::string& path);
float read_float(const json& v, const std::string& path);  // refuses values beyond float range
bool read_bool(const json& v, const std::string& path);
std::string read_string(const json& v, const std::string& path);
std::pair<double, double> read_range(const json& v, const std::string& path);  // [min, max]
std::pair<int, int> read_int_range(const json& v, const std::string& path);
std::array<double, 3> read_vec3(const json& v, const std::string& path);       // [x, y, z]

// Fails with "path: must be <rule>, got <got>" unless ok.
void check(bool ok, const std::string& path, const std::string& rule, const std::string& got);
std::string num(double x);  // shortest readable form for messages

// Shortest decimal that reads back as the same float (1e-3f prints 0.001).
json float_json(float f);

// Calls read(key, value, path) for every key of `obj`, after checking that
// the key is listed for `section` in `table`.
template <typename F>
void for_each_key(const json& obj, const std::string& section, const KeyTable& table, F read);

// Throws the unknown-key / not-an-object errors for_each_key uses.
void check_section_key(const std::string& section, const KeyTable& table,
                       const std::string& key);
void check_is_object(const json& obj, const std::string& section);

template <typename F>
void for_each_key(const json& obj, const std::string& section, const KeyTable& table, F read) {
  check_is_object(obj, section);
  for (const auto& [key, value] : obj.items()) {
    check_section_key(section, table, key);
    read(key, value, join_path(section, key));
  }
}

}  // namespace dq
