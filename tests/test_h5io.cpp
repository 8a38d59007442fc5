// H5File: round trips of datasets, attributes and groups, and the one-line
// errors for files and objects that are missing, truncated or of the wrong type.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/io/h5io.h"

namespace fs = std::filesystem;
using dq::H5File;

namespace {

// A fresh path under the system temp folder, removed when the test ends.
struct TempPath {
  std::string path;
  explicit TempPath(const std::string& name)
      : path((fs::temp_directory_path() /
              ("deepqsm_h5io_" + std::to_string(::getpid()) + "_" + name))
                 .string()) {}
  ~TempPath() {
    std::error_code ec;
    fs::remove(path, ec);
  }
};

// Requires that f() throws dq::Error whose message contains every fragment.
template <typename F>
void require_error(F f, const std::vector<std::string>& fragments) {
  try {
    f();
  } catch (const dq::Error& e) {
    std::string msg = e.what();
    INFO(msg);
    for (const auto& s : fragments) CHECK(msg.find(s) != std::string::npos);
    CHECK(msg.find('\n') == std::string::npos);
    return;
  }
  FAIL("expected dq::Error");
}

}  // namespace

TEST_CASE("h5io: datasets, groups and attributes round trip", "[h5io]") {
  TempPath tmp("roundtrip.h5");
  std::vector<float> f(2 * 3 * 4);
  for (size_t i = 0; i < f.size(); ++i) f[i] = 0.5f * static_cast<float>(i) - 3.25f;
  std::vector<int64_t> ints = {-5, 0, 7, int64_t{1} << 40};
  float scalar = 1.5f;
  {
    H5File h(tmp.path, H5File::Mode::truncate);
    h.create_group("params");
    h.create_group("params/inner");
    h.write_floats("params/inner/w", {2, 3, 4}, f.data());
    h.write_int64s("counts", {4}, ints.data());
    h.write_floats("scalar", {}, &scalar);
    h.set_attr("/", "name", std::string("deepqsm"));
    h.set_attr("", "step", int64_t{-42});
    h.set_attr("params/inner/w", "lr", 1e-3);
    h.set_attr("params", "kind", std::string("weights"));
    h.set_attr("params", "kind", std::string("replaced"));  // overwrite
    h.flush();
  }
  H5File h(tmp.path, H5File::Mode::read);
  CHECK(h.path() == tmp.path);
  CHECK(h.exists("params"));
  CHECK(h.exists("params/inner/w"));
  CHECK(h.exists("params/kind"));  // an attribute path
  CHECK_FALSE(h.exists("params/missing"));
  CHECK_FALSE(h.exists("nope/deeper/still"));

  std::vector<int64_t> dims;
  CHECK(h.read_floats("params/inner/w", &dims) == f);
  CHECK(dims == std::vector<int64_t>{2, 3, 4});
  CHECK(h.dims("counts") == std::vector<int64_t>{4});
  CHECK(h.read_int64s("counts") == ints);
  CHECK(h.read_floats("scalar", &dims) == std::vector<float>{1.5f});
  CHECK(dims.empty());

  CHECK(h.attr_string("/", "name") == "deepqsm");
  CHECK(h.attr_string("params", "kind") == "replaced");
  CHECK(h.attr_int("/", "step") == -42);
  CHECK(h.attr_double("params/inner/w", "lr") == 1e-3);
  CHECK(h.attr_double("/", "step") == -42.0);  // integers widen to double
  CHECK(h.has_attr("/", "step"));
  CHECK_FALSE(h.has_attr("/", "nope"));
  CHECK_FALSE(h.has_attr("nope", "step"));
}

TEST_CASE("h5io: missing objects and wrong types are one-line errors", "[h5io]") {
  TempPath tmp("errors.h5");
  {
    H5File h(tmp.path, H5File::Mode::truncate);
    float x = 1.0f;
    int64_t n = 3;
    h.write_floats("x", {1}, &x);
    h.write_int64s("n", {1}, &n);
    h.set_attr("/", "s", std::string("text"));
    require_error([&] { h.write_floats("x", {1}, &x); }, {tmp.path, "'x'", "already exists"});
    require_error([&] { h.write_floats("nogroup/x", {1}, &x); }, {tmp.path, "'nogroup/x'"});
    require_error([&] { h.create_group("a/b"); }, {tmp.path, "'a/b'"});
  }
  H5File h(tmp.path, H5File::Mode::read);
  require_error([&] { h.read_floats("missing"); }, {tmp.path, "no dataset 'missing'"});
  require_error([&] { h.read_floats("a/b/c"); }, {tmp.path, "no dataset 'a/b/c'"});
  require_error([&] { h.dims("missing"); }, {tmp.path, "'missing'"});
  require_error([&] { h.read_floats("n"); }, {tmp.path, "'n'", "integer", "expected float"});
  require_error([&] { h.read_int64s("x"); }, {tmp.path, "'x'", "float", "expected integer"});
  require_error([&] { h.attr_int("/", "missing"); }, {tmp.path, "no attribute 'missing'"});
  require_error([&] { h.attr_int("/", "s"); }, {tmp.path, "'s'", "string"});
  require_error([&] { h.attr_string("x", "s"); }, {tmp.path, "no attribute 's' on 'x'"});
}

TEST_CASE("h5io: missing, non-HDF5 and truncated files are refused", "[h5io]") {
  TempPath missing("missing.h5");
  require_error([&] { H5File h(missing.path, H5File::Mode::read); },
                {missing.path, "no such file"});

  TempPath text("text.h5");
  { std::ofstream(text.path) << "this is not an HDF5 file\n"; }
  require_error([&] { H5File h(text.path, H5File::Mode::read); }, {text.path, "not an HDF5 file"});

  // A valid file cut in half: the superblock survives, the data does not.
  TempPath full("full.h5");
  std::vector<float> big(64 * 1024, 2.0f);
  {
    H5File h(full.path, H5File::Mode::truncate);
    h.write_floats("big", {static_cast<int64_t>(big.size())}, big.data());
  }
  TempPath cut("cut.h5");
  {
    std::ifstream in(full.path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::ofstream(cut.path, std::ios::binary)
        .write(bytes.data(), static_cast<std::streamsize>(bytes.size() / 2));
  }
  require_error(
      [&] {
        H5File h(cut.path, H5File::Mode::read);
        h.read_floats("big");
      },
      {cut.path});

  require_error([&] { H5File h("/nonexistent-folder/x.h5", H5File::Mode::truncate); },
                {"/nonexistent-folder/x.h5", "cannot create"});
}
