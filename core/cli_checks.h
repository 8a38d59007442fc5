// Command-line validators with messages a user can read. CLI11's own say
// "Value 0 not in range 0.000000 to 1797...(309 digits)" for PositiveNumber
// and "not in range" for a word where a number belongs. Header-only, for
// deepqsm and deepqsm-infer (CLI11 puts the option's name in front).
#pragma once
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdint>
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

}  // namespace detail

// A finite number > 0.
inline CLI::Validator positive() {
  return CLI::Validator(
      [](std::string& text) {
        double v = 0;
        std::string err = detail::parse_number(text, v);
        if (err.empty() && !(v > 0)) err = "must be greater than 0, got " + text;
        return err;
      },
      "> 0");
}

// A finite number >= 0.
inline CLI::Validator non_negative() {
  return CLI::Validator(
      [](std::string& text) {
        double v = 0;
        std::string err = detail::parse_number(text, v);
        if (err.empty() && !(v >= 0)) err = "must be 0 or more, got " + text;
        return err;
      },
      ">= 0");
}

// An integer in [lo, hi], written as one (digits, optionally signed).
inline CLI::Validator int_range(int64_t lo, int64_t hi) {
  return CLI::Validator(
      [lo, hi](std::string& text) {
        const size_t sign = !text.empty() && (text[0] == '-' || text[0] == '+') ? 1 : 0;
        if (text.size() == sign || text.find_first_not_of("0123456789", sign) != std::string::npos)
          return "expected a whole number, got '" + text + "'";
        // Digits only, so stod fails only on overflow (beyond 1e308): too large.
        double v = HUGE_VAL;
        try {
          v = std::stod(text);
        } catch (const std::out_of_range&) {
          v = text[0] == '-' ? -HUGE_VAL : HUGE_VAL;
        }
        const std::string rule =
            hi == INT64_MAX
                ? "must be a whole number >= " + std::to_string(lo)
                : "must be a whole number from " + std::to_string(lo) + " to " + std::to_string(hi);
        if (v < static_cast<double>(lo)) return rule + ", got " + text;
        if (v > static_cast<double>(hi))
          return text + " is too large (at most " + std::to_string(hi) + ")";
        return std::string();
      },
      "in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
}

// An integer >= 1 (counts: steps, iterations, GPUs).
inline CLI::Validator positive_int() {
  return int_range(1, INT64_MAX);
}

}  // namespace dq::cli
