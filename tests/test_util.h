// Helpers shared by the tests that run the built binaries: a temporary
// directory that cleans up after itself, and running a program through the
// shell with its exit status, stdout and stderr captured.
#pragma once
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace dq::test {

namespace fs = std::filesystem;

// ||got - want|| / ||want|| (not demeaned; core/qsm/metrics.h has the QSM metrics).
inline double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double e = 0, s = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    e += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    s += double(want[i]) * want[i];
  }
  return std::sqrt(e / s);
}

// A fresh directory under the system temp dir, removed with its contents.
struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag = "deepqsm") {
    std::string tmpl = (fs::temp_directory_path() / (tag + "-XXXXXX")).string();
    REQUIRE(mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path / name).string(); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(path / name) << text;
    return file(name);
  }
};

inline std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

struct Run {
  int status = -1;  // raw wait status from std::system
  std::string out, err;
  bool exited() const { return WIFEXITED(status); }  // false when killed by a signal
  int code() const { return WIFEXITED(status) ? WEXITSTATUS(status) : -1; }
};

// Runs `env 'program' args` through the shell, capturing both streams in `dir`.
inline Run run_program(const TempDir& dir, const std::string& program, const std::string& args,
                       const std::string& env = "") {
  const fs::path out = dir.path / "stdout.txt", err = dir.path / "stderr.txt";
  const std::string cmd =
      env + " '" + program + "' " + args + " >'" + out.string() + "' 2>'" + err.string() + "'";
  Run r;
  r.status = std::system(cmd.c_str());
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// A prefix for run_program's `env`: no file the program writes may grow past
// `bytes` (ulimit -f counts 512-byte blocks), and a write past it fails with
// EFBIG instead of ending the process (SIGXFSZ ignored): a disk filling up
// at a chosen point.
inline std::string file_size_limit(int64_t bytes) {
  return "trap '' XFSZ; ulimit -f " + std::to_string(bytes / 512) + ";";
}

}  // namespace dq::test
