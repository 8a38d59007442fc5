// Outputs whole or absent (core/io/output_files.h): a temporary is renamed into
// place when finished and removed otherwise, also by SIGINT/SIGTERM; an
// OutputGroup's files appear together or leave the old ones as they were.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/io/output_files.h"
#include "tests/test_util.h"

namespace {

using namespace dq::test;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

void put(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

// The files in `dir` whose names hold a temporary's tag.
int temporaries(const TempDir& dir) {
  int n = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir.path))
    n += e.path().filename().string().find(dq::kTemporaryTag) != std::string::npos;
  return n;
}

}  // namespace

TEST_CASE("a pending file moves into place when finished, else disappears", "[output_files]") {
  TempDir dir("deepqsm-out");
  const std::string a = dir.file("a.txt");
  put(a, "old");
  {
    dq::PendingFile f(a, a + ".tmp1");
    put(f.tmp(), "new");
    f.finish();
    CHECK_FALSE(fs::exists(f.tmp()));
  }
  CHECK(slurp(a) == "new");
  {
    dq::PendingFile f(a, a + ".tmp1");
    put(f.tmp(), "abandoned");
  }  // an exception or early return on the way: the old file stays
  CHECK(slurp(a) == "new");
  CHECK(temporaries(dir) == 0);

  // A rename that fails names the output and removes the temporary.
  const std::string d = dir.file("folder");
  fs::create_directory(d);
  put(d + "/inside", "x");
  dq::PendingFile f(d, d + ".tmp1");
  put(f.tmp(), "new");
  try {
    f.finish();
    FAIL("a rename onto a folder succeeded");
  } catch (const dq::Error& e) {
    CHECK_THAT(e.what(), Contains(d) && Contains("could not move the finished file into place"));
  }
  CHECK(temporaries(dir) == 0);
}

TEST_CASE("an output group's files appear together or not at all", "[output_files]") {
  TempDir dir("deepqsm-out");
  const std::string a = dir.file("a.txt"), b = dir.file("b.txt");
  put(a, "old a");
  put(b, "old b");

  // Failing after the first file was finished: both old files stay.
  try {
    dq::OutputGroup g;
    dq::PendingFile fa(a, a + ".tmp1");
    put(fa.tmp(), "new a");
    fa.finish();
    CHECK(slurp(a) == "old a");  // held back until commit
    dq::PendingFile fb(b, b + ".tmp1");
    put(fb.tmp(), "new b");
    dq::fail("disk full");
  } catch (const dq::Error&) {
  }
  CHECK(slurp(a) == "old a");
  CHECK(slurp(b) == "old b");
  CHECK(temporaries(dir) == 0);

  // Committed: both new.
  {
    dq::OutputGroup g;
    for (const std::string& p : {a, b}) {
      dq::PendingFile f(p, p + ".tmp1");
      put(f.tmp(), "new " + p);
      f.finish();
    }
    g.commit();
  }
  CHECK(slurp(a) == "new " + a);
  CHECK(slurp(b) == "new " + b);

  // A folder put in the way of a later file after the command's checks:
  // nothing is replaced.
  fs::remove(b);
  fs::create_directory(b);
  put(b + "/inside", "x");
  {
    dq::OutputGroup g;
    for (const std::string& p : {a, b}) {
      dq::PendingFile f(p, p + ".tmp1");
      put(f.tmp(), "newer");
      f.finish();
    }
    CHECK_THROWS_WITH(g.commit(), Contains(b) && Contains("is a folder"));
  }
  CHECK(slurp(a) == "new " + a);
  CHECK(temporaries(dir) == 0);
  // After a group, finish() renames at once again.
  dq::PendingFile f(a, a + ".tmp1");
  put(f.tmp(), "later");
  f.finish();
  CHECK(slurp(a) == "later");
}

TEST_CASE("SIGTERM and SIGINT remove pending temporaries and still stop the process",
          "[output_files]") {
  for (int sig : {SIGTERM, SIGINT}) {
    TempDir dir("deepqsm-out");
    const std::string a = dir.file("a.txt"), b = dir.file("b.txt");
    put(a, "old a");
    const pid_t child = fork();
    REQUIRE(child >= 0);
    if (child == 0) {
      // A command half way through: one file finished in a group, one being
      // written. Catch2's own handler is set while a test runs; a command
      // starts with the default action, which it gets again after the cleanup.
      signal(sig, SIG_DFL);
      dq::OutputGroup g;
      dq::PendingFile fa(a, a + ".tmp1");
      put(fa.tmp(), "new a");
      fa.finish();
      dq::PendingFile fb(b, b + ".tmp1");
      put(fb.tmp(), "new b");
      raise(sig);
      _exit(3);  // not reached: the signal ends the process
    }
    int status = 0;
    REQUIRE(waitpid(child, &status, 0) == child);
    CHECK(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == sig);
    CHECK(slurp(a) == "old a");
    CHECK_FALSE(fs::exists(b));
    CHECK(temporaries(dir) == 0);
  }
}

TEST_CASE("a stop signal during an output group's renames waits for them", "[output_files]") {
  TempDir dir("deepqsm-out");
  constexpr int kFiles = 2000;
  const auto name = [&](int i) { return dir.file("f" + std::to_string(i)); };
  for (int i = 0; i < kFiles; ++i) put(name(i), "old");
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    signal(SIGTERM, SIG_DFL);
    dq::OutputGroup g;
    std::vector<std::unique_ptr<dq::PendingFile>> files;
    for (int i = 0; i < kFiles; ++i) {
      files.push_back(std::make_unique<dq::PendingFile>(name(i), name(i) + ".tmp1"));
      put(files.back()->tmp(), "new");
      files.back()->finish();
    }
    // SIGTERM as soon as the first file is in place, i.e. while commit() runs.
    std::thread killer([&] {
      while (slurp(name(0)) != "new") std::this_thread::yield();
      kill(getpid(), SIGTERM);
    });
    g.commit();
    killer.join();
    for (int i = 0; i < 1000; ++i) usleep(10000);  // the signal ends the process first
    _exit(3);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(WIFSIGNALED(status));
  CHECK(WTERMSIG(status) == SIGTERM);
  int renewed = 0;
  for (int i = 0; i < kFiles; ++i) renewed += slurp(name(i)) == "new";
  CHECK(renewed == kFiles);  // all of them, not a mix
  CHECK(temporaries(dir) == 0);
}
