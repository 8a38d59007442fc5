#include "core/io/json_read.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <set>
#include <sstream>

#include "core/error.h"

namespace dq {

namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// " (did you mean base_filters?)", " (steps belongs in train: train.steps)", or "".
std::string suggestion(const std::string& section, const std::string& key, const KeyTable& table) {
  for (const auto& [sec, keys] : table) {
    if (sec != section && std::find(keys.begin(), keys.end(), key) != keys.end())
      return " (" + key + " belongs in " + (sec.empty() ? "the top level" : sec) + ": " +
             join_path(sec, key) + ")";
  }
  for (const auto& [sec, keys] : table) {
    if (sec != section) continue;
    std::string best;
    size_t best_d = std::max<size_t>(2, key.size() / 3) + 1;
    for (const auto& k : keys) {
      const size_t d = edit_distance(key, k);
      // d < both lengths: "b" is not a typo of "lr" just because both are short.
      if (d < best_d && d < key.size() && d < k.size()) best_d = d, best = k;
    }
    if (!best.empty()) return " (did you mean " + best + "?)";
  }
  return "";
}

// Rejects duplicate keys, which nlohmann would otherwise resolve silently by
// keeping the last one. `keys` holds the keys seen so far in each open object
// and `names` the key each open object was stored under, for the path.
struct DuplicateKeyCheck {
  std::vector<std::set<std::string>> keys;
  std::vector<std::string> names;
  std::string last_key;

  bool operator()(int, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        names.push_back(keys.empty() ? "" : last_key);
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        keys.pop_back();
        names.pop_back();
        break;
      case json::parse_event_t::key:
        last_key = parsed.get<std::string>();
        if (!keys.back().insert(last_key).second) {
          std::string path;
          for (size_t i = 1; i < names.size(); ++i) path = join_path(path, names[i]);
          fail(join_path(path, last_key), ": duplicate key");
        }
        break;
      default: break;
    }
    return true;
  }
};

// nlohmann's message reads "[json.exception.parse_error.101] parse error at
// line 3, column 5: syntax error while parsing ..."; keep what follows the
// position and print the position ourselves so every message has one shape.
std::string json_syntax_message(const json::parse_error& e, const std::string& text) {
  std::string what = e.what();
  const std::string marker = "parse error";
  const size_t p = what.find(marker);
  if (p != std::string::npos) {
    const size_t colon = what.find(": ", p);
    what = colon == std::string::npos ? what.substr(p) : what.substr(colon + 2);
  }
  size_t line = 1, col = 0;
  const size_t end = std::min<size_t>(e.byte, text.size());
  for (size_t i = 0; i < end; ++i) {
    col = text[i] == '\n' ? 0 : col + 1;
    line += text[i] == '\n';
  }
  std::ostringstream os;
  os << "invalid JSON at line " << line << ", column " << std::max<size_t>(col, 1) << ": " << what;
  return os.str();
}

}  // namespace

std::string join_path(const std::string& section, const std::string& key) {
  return section.empty() ? key : section + "." + key;
}

std::string type_phrase(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::object: return "an object";
    case json::value_t::array: return "an array";
    case json::value_t::string: return "a string";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a number";
    default: return "an unsupported value";
  }
}

// Reads one value from JSON, refusing anything that is not the expected type.
double read_number(const json& v, const std::string& path) {
  if (!v.is_number()) fail(path, ": expected a number, got ", type_phrase(v));
  const double x = v.get<double>();
  if (!std::isfinite(x)) fail(path, ": ", v.dump(), " is not a finite number");
  return x;
}

// Integers must be integers. A float with an integral value (1e5) is accepted
// because JSON writers and people both write large step counts that way.
int64_t read_int(const json& v, const std::string& path) {
  if (v.is_number_unsigned()) {
    if (v.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      fail(path, ": ", v.dump(), " is too large");
    return static_cast<int64_t>(v.get<uint64_t>());
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double x = v.get<double>();
    // 2^63 is exactly representable, so this bound is exact.
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9223372036854775808.0)
      return static_cast<int64_t>(x);
    fail(path, ": expected an integer, got ", v.dump());
  }
  fail(path, ": expected an integer, got ", type_phrase(v));
}

int read_int32(const json& v, const std::string& path) {
  const int64_t x = read_int(v, path);
  if (x < std::numeric_limits<int>::min() || x > std::numeric_limits<int>::max())
    fail(path, ": ", x, " is out of range");
  return static_cast<int>(x);
}

bool read_bool(const json& v, const std::string& path) {
  if (!v.is_boolean()) fail(path, ": expected true or false, got ", type_phrase(v));
  return v.get<bool>();
}

std::string read_string(const json& v, const std::string& path) {
  if (!v.is_string()) fail(path, ": expected a string, got ", type_phrase(v));
  return v.get<std::string>();
}

const json& read_array(const json& v, const std::string& path, size_t n, const char* what) {
  if (!v.is_array() || v.size() != n)
    fail(path, ": expected ", what, ", got ",
         v.is_array() ? "an array of " + std::to_string(v.size()) : type_phrase(v));
  return v;
}

std::pair<double, double> read_range(const json& v, const std::string& path) {
  read_array(v, path, 2, "[min, max]");
  return {read_number(v[0], path + "[0]"), read_number(v[1], path + "[1]")};
}

std::pair<int, int> read_int_range(const json& v, const std::string& path) {
  read_array(v, path, 2, "[min, max]");
  return {read_int32(v[0], path + "[0]"), read_int32(v[1], path + "[1]")};
}

std::array<double, 3> read_vec3(const json& v, const std::string& path) {
  read_array(v, path, 3, "[x, y, z]");
  return {read_number(v[0], path + "[0]"), read_number(v[1], path + "[1]"),
          read_number(v[2], path + "[2]")};
}

// Float fields (dropout, lr, ...) are read as double and narrowed. Values
// too large for a float are refused here; one that underflows (1e-50 -> 0)
// is caught by the range checks, which run on the narrowed value.
float read_float(const json& v, const std::string& path) {
  const double x = read_number(v, path);
  if (std::fabs(x) > std::numeric_limits<float>::max())
    fail(path, ": ", v.dump(), " is out of range for a 32-bit float");
  return static_cast<float>(x);
}

void check(bool ok, const std::string& path, const std::string& rule, const std::string& got) {
  if (!ok) fail(path, ": must be ", rule, ", got ", got);
}

std::string num(double x) {
  std::ostringstream os;
  os << x;
  return os.str();
}

json float_json(float f) {
  char buf[32];
  const auto res = std::to_chars(buf, buf + sizeof buf, f);
  return json::parse(std::string(buf, res.ptr));
}

void check_is_object(const json& obj, const std::string& section) {
  if (!obj.is_object())
    fail(section.empty() ? "the top level" : section, ": expected an object, got ",
         type_phrase(obj));
}

void check_section_key(const std::string& section, const KeyTable& table,
                       const std::string& key) {
  const auto it =
      std::find_if(table.begin(), table.end(), [&](const auto& s) { return s.first == section; });
  if (it == table.end() || std::find(it->second.begin(), it->second.end(), key) == it->second.end())
    fail(join_path(section, key), ": unknown key", suggestion(section, key, table));
}

json parse_json_text(const std::string& text) {
  try {
    return json::parse(text, DuplicateKeyCheck{});
  } catch (const json::parse_error& e) {
    fail(json_syntax_message(e, text));
  } catch (const json::exception& e) {
    // A number beyond double's range (1e999) is an out_of_range error; keep
    // nlohmann's text without its "[json.exception.out_of_range.406] " tag.
    std::string what = e.what();
    const size_t tag = what.find("] ");
    if (tag != std::string::npos) what.erase(0, tag + 2);
    fail("invalid JSON: ", what);
  }
}

}  // namespace dq
