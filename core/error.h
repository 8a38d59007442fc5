// Errors: one exception type whose message is a single line a user can act on.
// The CLI catches it at the top, prints "deepqsm: <message>" and exits 1.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace dq {

struct Error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// A failure of the device or its runtime (a CUDA call, device memory running
// out), as opposed to a library declining a request: code that routes around
// refusals (cuDNN engine choice) lets these through.
struct DeviceError : Error {
  using Error::Error;
};

namespace detail {
inline void append(std::ostringstream&) {}
template <typename T, typename... Rest>
void append(std::ostringstream& os, const T& v, const Rest&... rest) {
  os << v;
  append(os, rest...);
}
}  // namespace detail

// Builds a message from pieces: fail("shape ", n, " is not a multiple of 16").
template <typename... Args>
[[noreturn]] void fail(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  throw Error(os.str());
}

// fail() for DeviceError.
template <typename... Args>
[[noreturn]] void fail_device(const Args&... args) {
  std::ostringstream os;
  detail::append(os, args...);
  throw DeviceError(os.str());
}

}  // namespace dq

// Internal invariants (programming errors) carry file:line; user-facing
// problems use dq::fail with a message that names the input at fault.
#define DQ_CHECK(cond, ...)                                                  \
  do {                                                                       \
    if (!(cond)) ::dq::fail(__FILE__, ":", __LINE__, ": ", __VA_ARGS__);    \
  } while (0)
