// The process supervision behind `deepqsm train --gpus N`
// (run_rank_processes), exercised with shell scripts as ranks: no GPU or
// NCCL is involved in starting, stopping or killing the ranks.
#include <catch2/catch.hpp>

#include <chrono>
#include <string>

#include "tests/test_util.h"
#include "train/comm.h"

using dq::test::TempDir;
namespace fs = std::filesystem;

namespace {
// Runs `script` as n ranks under /bin/sh, with DIR set to the temp folder.
int run_ranks(const TempDir& dir, const std::string& script, int n, double* seconds = nullptr) {
  const auto t0 = std::chrono::steady_clock::now();
  const int rc = dq::run_rank_processes("/bin/sh", {"sh", "-c", script}, n,
                                        {"DIR=" + dir.path.string(), "EXTRA=present"});
  if (seconds)
    *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return rc;
}
}  // namespace

TEST_CASE("Spawned ranks each get their rank, the world size and the extra variables",
          "[launcher]") {
  TempDir dir("deepqsm-launch");
  const int rc = run_ranks(
      dir, "echo \"$DEEPQSM_WORLD_SIZE $EXTRA\" > \"$DIR/rank-$DEEPQSM_RANK\"", 3);
  CHECK(rc == 0);
  for (int r = 0; r < 3; ++r)
    CHECK(dq::test::slurp(dir.path / ("rank-" + std::to_string(r))) == "3 present\n");
}

TEST_CASE("a failing rank ends the others with its status instead of leaving them waiting",
          "[launcher]") {
  TempDir dir("deepqsm-launch");
  // Rank 1 stands in for a rank blocked in a collective forever.
  double seconds = 0;
  const int rc = run_ranks(
      dir, "if [ $DEEPQSM_RANK = 0 ]; then exit 3; fi; exec sleep 600", 2, &seconds);
  CHECK(rc == 3);
  CHECK(seconds < 60);  // not a timing assertion: without the kill this takes 10 minutes
}

TEST_CASE("a rank killed by a signal counts as a failure", "[launcher]") {
  TempDir dir("deepqsm-launch");
  const int rc = run_ranks(
      dir, "if [ $DEEPQSM_RANK = 0 ]; then kill -KILL $$; fi; exec sleep 600", 2);
  CHECK(rc == 128 + 9);
}

TEST_CASE("SIGTERM to the launcher is passed on once, and ranks that stop cleanly end it",
          "[launcher]") {
  TempDir dir("deepqsm-launch");
  // Each rank traps SIGTERM like the trainer (finish, then exit 143) and
  // says it is ready; rank 0 then signals the launcher ($PPID) itself.
  const std::string script =
      "trap 'echo stopped > \"$DIR/stop-$DEEPQSM_RANK\"; exit 143' TERM; "
      "touch \"$DIR/ready-$DEEPQSM_RANK\"; "
      "if [ $DEEPQSM_RANK = 0 ]; then "
      "  while [ ! -e \"$DIR/ready-1\" ]; do sleep 0.05; done; kill -TERM $PPID; "
      "fi; "
      "while :; do sleep 0.1; done";  // the trap runs between two sleeps
  double seconds = 0;
  const int rc = run_ranks(dir, script, 2, &seconds);
  CHECK(rc == 143);
  CHECK(fs::exists(dir.path / "stop-0"));
  CHECK(fs::exists(dir.path / "stop-1"));
  CHECK(seconds < 60);
}

TEST_CASE("a second SIGTERM to the launcher kills ranks that do not stop", "[launcher]") {
  TempDir dir("deepqsm-launch");
  // The ranks ignore SIGTERM (a step that never ends); rank 0 signals twice.
  const std::string script =
      "trap '' TERM; touch \"$DIR/ready-$DEEPQSM_RANK\"; "
      "if [ $DEEPQSM_RANK = 0 ]; then "
      "  while [ ! -e \"$DIR/ready-1\" ]; do sleep 0.05; done; "
      "  kill -TERM $PPID; sleep 0.5; kill -TERM $PPID; "
      "fi; "
      "exec sleep 600";
  double seconds = 0;
  const int rc = run_ranks(dir, script, 2, &seconds);
  CHECK(rc == 128 + 9);
  CHECK(seconds < 60);
}
