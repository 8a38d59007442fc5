// Command-line validators with messages a user can read. CLI11's own say
// "Value 0 not in range 0.000000 to 1797...(309 digits)" for PositiveNumber
// and "not in range" for a word where a number belongs. Header-only, for
// deepqsm and deepqsm-infer (CLI11 puts the option's name in front). The
// whole-number ones rewrite the text ("+010" -> "10"), so attach them with
// ->transform(), not ->check(), which would discard the rewrite.
#pragma once
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace dq::cli {

namespace detail {

// The option's text as a finite number, or an error message.
inline std::string parse_number(const std::string& text, double& value) {
  size_t used = 0;
  try {
    value = std::stod(text, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != text.size()) return "expected a number, got '" + text + "'";
  if (!std::isfinite(value)) return "expected a finite number, got '" + text + "'";
  return "";
}

// Decimal digits with an optional sign, rewritten without '+' and leading
// zeros: CLI11 converts integers in base 0, so "010" would become 8.
inline bool normalise_whole(std::string& text, bool allow_minus) {
  const bool minus = !text.empty() && text[0] == '-';
  const size_t sign = !text.empty() && (text[0] == '+' || (allow_minus && minus)) ? 1 : 0;
  if (text.size() == sign || text.find_first_not_of("0123456789", sign) != std::string::npos)
    return false;
  const size_t first = std::min(text.find_first_not_of('0', sign), text.size() - 1);
  text = (minus ? "-" : "") + text.substr(first);
  return true;
}

}  // namespace detail

// A finite number above `lo` (strict) or from `lo` on.
inline CLI::Validator number_from(double lo, bool strict) {
  char bound[64];
  std::snprintf(bound, sizeof bound, "%g", lo);
  const std::string rule = strict ? "must be greater than " + std::string(bound)
                                  : "must be " + std::string(bound) + " or more";
  return CLI::Validator(
      [lo, strict, rule](std::string& text) {
        double v = 0;
        std::string err = detail::parse_number(text, v);
        if (err.empty() && !(strict ? v > lo : v >= lo)) err = rule + ", got " + text;
        return err;
      },
      (strict ? "> " : ">= ") + std::string(bound));
}

// A finite number > 0.
inline CLI::Validator positive() {
  return number_from(0, true);
}

// A finite number >= 0.
inline CLI::Validator non_negative() {
  return number_from(0, false);
}

// A seed: any whole number from 0 to 2^64 - 1.
inline CLI::Validator uint64_any() {
  return CLI::Validator(
      [](std::string& text) {
        const std::string given = text;
        if (!detail::normalise_whole(text, false))
          return "expected a whole number from 0 to 2^64 - 1, got '" + given + "'";
        try {
          (void)std::stoull(text);
        } catch (const std::out_of_range&) {
          return given + " is too large (at most 2^64 - 1)";
        }
        return std::string();
      },
      "0 .. 2^64-1");
}

// An integer in [lo, hi], written as one (decimal digits, optionally signed).
inline CLI::Validator int_range(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) {
        const std::string given = text;
        if (!detail::normalise_whole(text, true))
          return "expected a whole number, got '" + given + "'";
        const std::string rule =
            hi == INT64_MAX
                ? "must be a whole number >= " + std::to_string(lo)
                : "must be a whole number from " + std::to_string(lo) + " to " + std::to_string(hi);
        // Digits only, so stoll fails only beyond int64: too large or too small.
        int64_t v = 0;
        try {
          v = std::stoll(text);
        } catch (const std::out_of_range&) {
          return text[0] == '-' ? rule + ", got " + given
                                : given + " is too large (at most " + std::to_string(hi) + ")";
        }
        if (v < lo) return rule + ", got " + given;
        if (v > hi) return given + " is too large (at most " + std::to_string(hi) + ")";
        return std::string();
      },
      "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

// An integer >= 1 (counts: steps, iterations, GPUs).
inline CLI::Validator positive_int() {
  return int_range(1, INT64_MAX);
}

}  // namespace dq::cli
