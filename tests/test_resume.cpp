// Exact resumption (train/trainer.h): N steps straight and N/2 + --resume
// give bit-identical checkpoints; a run killed with SIGKILL resumes from its
// last checkpoint and ends where an uninterrupted run ends; a NaN loss stops
// the run naming the step and leaves the last good checkpoint alone; resume
// refuses damaged checkpoints and changed configs; a run whose loss scaler
// skips steps resumes exactly too.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "core/error.h"
#include "core/nn/checkpoint.h"
#include "tests/checkpoint_v2.h"
#include "tests/train_util.h"
#include "train/trainer.h"

using namespace dq;
using namespace dq::test;
namespace fs = std::filesystem;
using Catch::Matchers::Contains;

namespace {

// A U-Net small enough that a step takes milliseconds. Streaming blocks of
// 3 steps make the resumed half start inside a block, so the data position
// is exercised too.
TrainConfig tiny(const std::string& out) {
  TrainConfig cfg = tiny_run(out);
  cfg.refresh_every = 3;
  cfg.steps = 8;
  cfg.checkpoint_every = 2;
  return cfg;
}

void require_same(const CheckpointData& a, const CheckpointData& b) {
  REQUIRE(a.step == b.step);
  REQUIRE(a.params.numel() == b.params.numel());
  CHECK(std::memcmp(a.params.raw(), b.params.raw(), a.params.nbytes()) == 0);
  CHECK(std::memcmp(a.adam_m.raw(), b.adam_m.raw(), a.adam_m.nbytes()) == 0);
  CHECK(std::memcmp(a.adam_v.raw(), b.adam_v.raw(), a.adam_v.nbytes()) == 0);
  CHECK(a.state.seed == b.state.seed);
  CHECK(a.state.data_position == b.state.data_position);
  CHECK(a.state.loss_scale.scale == b.state.loss_scale.scale);
  CHECK(a.state.loss_scale.clean_steps == b.state.loss_scale.clean_steps);
  CHECK(a.state.loss_scale.skipped_steps == b.state.loss_scale.skipped_steps);
}

std::string write_config(const TrainConfig& cfg, const std::string& name) {
  const fs::path p = fs::temp_directory_path() / name;
  std::ofstream(p) << train_config_to_json(cfg);
  return p.string();
}

// Trains `straight` to its end in one run, and `split` (the same config in
// another folder) for `half` steps, then --resume to the end.
struct StraightAndResumed {
  TrainResult straight, resumed;
};
StraightAndResumed straight_and_resumed(const TrainConfig& straight, const TrainConfig& split,
                                        int64_t half) {
  StraightAndResumed r;
  r.straight = run_training(straight, quiet());
  REQUIRE(r.straight.steps == straight.steps);
  TrainOptions first = quiet();
  first.steps_override = half;
  REQUIRE(run_training(split, first).steps == half);
  TrainOptions rest = quiet();
  rest.resume = true;
  r.resumed = run_training(split, rest);
  return r;
}

// Starts the deepqsm binary with output to files; returns its pid.
pid_t start_binary(const std::vector<std::string>& args, const std::string& log) {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> argv{const_cast<char*>(DEEPQSM_BINARY)};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(DEEPQSM_BINARY, argv.data());
    _exit(127);
  }
  return pid;
}

std::string slurp_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

int wait_exit(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

}  // namespace

TEST_CASE("N steps straight and N/2 + resume give bit-identical checkpoints", "[resume]") {
  const TrainConfig split = tiny("deepqsm-test-resume-b");
  const auto [a, b] = straight_and_resumed(tiny("deepqsm-test-resume-a"), split, 4);
  REQUIRE(a.steps == 8);
  TrainOptions rest = quiet();
  rest.resume = true;
  CHECK(b.resumed_from == 4);
  CHECK(b.steps == 8);
  CHECK(b.final_loss == a.final_loss);

  const CheckpointData ca = load_checkpoint(a.checkpoint), cb = load_checkpoint(b.checkpoint);
  require_same(ca, cb);
  CHECK(ca.state.data_position == 2);  // step 8 is in streaming block 7 / 3 = 2
  // keep_checkpoints (2) newest step files remain, plus checkpoint.h5.
  CHECK(newest_checkpoint(split.out_dir) == split.out_dir + "/checkpoint-00000008.h5");
  CHECK_FALSE(fs::exists(split.out_dir + "/checkpoint-00000004.h5"));
  CHECK(fs::exists(split.out_dir + "/checkpoint-00000006.h5"));

  SECTION("resuming a finished run trains nothing") {
    const TrainResult c = run_training(split, rest);
    CHECK(c.steps == 8);
    require_same(load_checkpoint(c.checkpoint), cb);
  }
  SECTION("a changed config is refused, naming the key") {
    TrainConfig changed = split;
    changed.optim.lr = 5e-4f;
    changed.steps = 10;
    CHECK_THROWS_WITH(run_training(changed, rest),
                      Contains("different config") && Contains("optim.lr"));
  }
}

TEST_CASE("A run killed with SIGKILL resumes from its last checkpoint", "[resume]") {
  TrainConfig cfg = tiny("deepqsm-test-kill");
  cfg.steps = 1000000;  // runs until killed
  cfg.checkpoint_every = 3;
  cfg.log_every = 1000;
  const std::string config = write_config(cfg, "deepqsm-test-kill.json");
  const std::string log = (fs::temp_directory_path() / "deepqsm-test-kill.log").string();
  const pid_t pid = start_binary({"train", "--config", config, "--quiet"}, log);
  // Kill once a checkpoint past the first exists, i.e. mid-way between two.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (newest_checkpoint(cfg.out_dir).find("checkpoint-00000006") == std::string::npos &&
         std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(pid, SIGKILL);
  REQUIRE(wait_exit(pid) == 128 + SIGKILL);

  const std::string newest = newest_checkpoint(cfg.out_dir);
  REQUIRE_FALSE(newest.empty());
  const int64_t k = load_checkpoint(newest).step;  // valid despite the kill: written atomically
  REQUIRE(k >= 6);
  const int64_t target = k + 4;

  const pid_t resumed = start_binary(
      {"train", "--config", config, "--resume", "--quiet", "--steps", std::to_string(target)}, log);
  REQUIRE(wait_exit(resumed) == 0);

  TrainConfig straight = tiny("deepqsm-test-kill-straight");
  straight.checkpoint_every = 3;
  straight.steps = target;
  TrainOptions opt = quiet();
  const TrainResult s = run_training(straight, opt);
  require_same(load_checkpoint(newest_checkpoint(cfg.out_dir)), load_checkpoint(s.checkpoint));
}

TEST_CASE("SIGTERM stops after the step in progress with a checkpoint of it", "[resume]") {
  TrainConfig cfg = tiny("deepqsm-test-term");
  cfg.steps = 1000000;          // runs until stopped
  cfg.checkpoint_every = 100000;  // no periodic checkpoint: the stop must write one
  cfg.log_every = 1;
  const std::string config = write_config(cfg, "deepqsm-test-term.json");
  const std::string log = (fs::temp_directory_path() / "deepqsm-test-term.log").string();
  const std::string jsonl = cfg.out_dir + "/log.jsonl";
  const pid_t pid = start_binary({"train", "--config", config, "--quiet"}, log);
  // Stop once a few steps are logged.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  auto logged_steps = [&] {
    std::ifstream in(jsonl);
    int64_t n = 0;
    for (std::string l; std::getline(in, l);) n += l.find("\"loss\"") != std::string::npos;
    return n;
  };
  while (logged_steps() < 3 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  kill(pid, SIGTERM);
  REQUIRE(wait_exit(pid) == 128 + SIGTERM);  // unfinished, but stopped by itself

  // The checkpoint is of the last completed step, the one the log ends with.
  const std::string newest = newest_checkpoint(cfg.out_dir);
  REQUIRE_FALSE(newest.empty());
  const int64_t k = load_checkpoint(newest).step;
  CHECK(k >= 3);
  std::ifstream in(jsonl);
  std::string last;
  for (std::string l; std::getline(in, l);) last = l;
  const nlohmann::json event = nlohmann::json::parse(last);
  CHECK(event.at("event") == "stopped by signal");
  CHECK(event.at("step") == k);
  CHECK(event.at("signal") == SIGTERM);
  CHECK_THAT(slurp_file(log), Contains("stopped by signal"));

  // Resuming from it ends where an uninterrupted run ends.
  const int64_t target = k + 3;
  const pid_t resumed = start_binary(
      {"train", "--config", config, "--resume", "--quiet", "--steps", std::to_string(target)}, log);
  REQUIRE(wait_exit(resumed) == 0);
  TrainConfig straight = tiny("deepqsm-test-term-straight");
  straight.steps = target;
  straight.checkpoint_every = 100000;
  const TrainResult s = run_training(straight, quiet());
  require_same(load_checkpoint(newest_checkpoint(cfg.out_dir)), load_checkpoint(s.checkpoint));
}

TEST_CASE("A non-finite loss stops the run naming the step", "[resume]") {
  TrainConfig cfg = tiny("deepqsm-test-nan");
  // Adam's first step moves every weight by about lr: 1e30 overflows the
  // next forward pass.
  cfg.optim.lr = 1e30f;
  cfg.checkpoint_every = 1;
  cfg.steps = 20;
  TrainOptions opt = quiet();
  int64_t bad_step = -1;
  try {
    run_training(cfg, opt);
    FAIL("training with lr 1e30 did not stop");
  } catch (const Error& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK_THAT(msg, Contains("training loss became") && Contains("at step"));
    bad_step = std::stoll(msg.substr(msg.find("at step ") + 8));
  }
  REQUIRE(bad_step >= 2);
  // The last good checkpoint is the step before, intact.
  const CheckpointData ck = load_checkpoint(newest_checkpoint(cfg.out_dir));
  CHECK(ck.step == bad_step - 1);
  CHECK(load_checkpoint(cfg.out_dir + "/checkpoint.h5").step == bad_step - 1);
}

TEST_CASE("Resume refuses damaged checkpoints and empty folders", "[resume]") {
  TrainConfig cfg = tiny("deepqsm-test-resume-damaged");
  cfg.steps = 2;
  TrainOptions opt = quiet();
  TrainOptions resume = opt;
  resume.resume = true;
  CHECK_THROWS_WITH(run_training(cfg, resume), Contains("no checkpoint in"));

  const std::string path = run_training(cfg, opt).checkpoint;
  const std::string step_file = newest_checkpoint(cfg.out_dir);
  // checkpoint.h5 is a hard link to the step file; break the link first so
  // damaging one leaves the other intact for the comparison.
  fs::remove(path);
  const auto size = fs::file_size(step_file);
  fs::resize_file(step_file, size / 2);
  cfg.steps = 4;
  CHECK_THROWS_WITH(run_training(cfg, resume),
                    Contains(step_file) && (Contains("truncated") || Contains("corrupt")));
}

TEST_CASE("Training from the patch stream resumes bit-identically", "[resume]") {
  // The stream deals batch k as a pure function of (seed, k), and a resumed
  // run restarts the producer at its step; fresh volumes every group.
  auto stream_cfg = [](const std::string& out) {
    TrainConfig cfg = tiny(out);
    cfg.source = "stream";
    cfg.refresh_every = 0;
    cfg.train_volumes = 0;
    cfg.steps = 6;
    return cfg;
  };
  const auto [a, b] = straight_and_resumed(stream_cfg("deepqsm-test-stream-a"),
                                           stream_cfg("deepqsm-test-stream-b"), 3);
  REQUIRE(a.steps == 6);
  CHECK(b.resumed_from == 3);  // the half run checkpoints at its last step
  CHECK(b.final_loss == a.final_loss);
  const CheckpointData ca = load_checkpoint(a.checkpoint), cb = load_checkpoint(b.checkpoint);
  require_same(ca, cb);
  CHECK(ca.state.data_position == 5);  // the stream's position is the step
}

TEST_CASE("A cosine learning-rate schedule resumes bit-identically", "[resume]") {
  // The rate is a function of Adam's update count, which the checkpoint
  // holds; the decay is longer than the run, so every step has its own rate.
  auto cosine = [](const std::string& out) {
    TrainConfig cfg = tiny(out);
    cfg.lr_schedule = "cosine";
    cfg.warmup_steps = 2;
    cfg.decay_steps = 10;
    cfg.lr_min = 1e-5f;
    return cfg;
  };
  const TrainConfig straight = cosine("deepqsm-test-cosine-a");
  const auto [a, b] = straight_and_resumed(straight, cosine("deepqsm-test-cosine-b"), 4);
  REQUIRE(a.steps == 8);
  CHECK(b.resumed_from == 4);
  require_same(load_checkpoint(a.checkpoint), load_checkpoint(b.checkpoint));

  // Every logged step carries the rate it used: the warm-up, then the cosine.
  std::ifstream log(straight.out_dir + "/log.jsonl");
  std::string line;
  int logged = 0;
  while (std::getline(log, line)) {
    const nlohmann::json e = nlohmann::json::parse(line);
    if (!e.contains("loss") || !e.contains("lr")) continue;
    INFO(line);
    CHECK(e["lr"].get<double>() == Approx(scheduled_lr(straight, e["step"].get<int64_t>())));
    ++logged;
  }
  CHECK(logged >= 1);
  // The same run at the constant optim.lr ends elsewhere.
  const TrainResult flat = run_training(tiny("deepqsm-test-cosine-c"), quiet());
  CHECK(flat.final_loss != a.final_loss);
}

TEST_CASE("A run with an active loss scaler resumes bit-identically", "[resume]") {
  // Targets of +-100 ppm make the fp32 gradients overflow at scales near
  // 2^127, and a growth interval of 1 doubles the scale after every clean
  // step, so steps are skipped before and after the split: the scale, its
  // clean-step count and the skip count (Adam's step count) must all resume.
  auto scaled = [](const std::string& out) {
    TrainConfig cfg = tiny(out);
    cfg.data.chi_min = -100.0;
    cfg.data.chi_max = 100.0;
    cfg.loss_scale = "dynamic";
    cfg.loss_scale_init = 0x1p127f;
    cfg.loss_scale_growth_interval = 1;
    cfg.steps = 12;
    cfg.keep_checkpoints = 10;
    return cfg;
  };
  const TrainConfig split = scaled("deepqsm-test-resume-scaled-b");
  const auto [a, b] = straight_and_resumed(scaled("deepqsm-test-resume-scaled-a"), split, 8);
  CHECK(b.resumed_from == 8);
  CHECK(b.final_loss == a.final_loss);
  CHECK(b.loss_scale == a.loss_scale);
  CHECK(b.skipped_steps == a.skipped_steps);
  const CheckpointData ca = load_checkpoint(a.checkpoint), cb = load_checkpoint(b.checkpoint);
  require_same(ca, cb);
  const CheckpointData half = load_checkpoint(split.out_dir + "/checkpoint-00000008.h5");
  INFO("skipped " << half.state.loss_scale.skipped_steps << " steps by step 8, "
                  << cb.state.loss_scale.skipped_steps << " by step 12");
  CHECK(half.state.loss_scale.skipped_steps >= 1);
  CHECK(cb.state.loss_scale.skipped_steps > half.state.loss_scale.skipped_steps);
  CHECK(cb.state.loss_scale.skipped_steps < 12);
}

TEST_CASE("A version 2 checkpoint, written before loss scaling, resumes exactly", "[resume]") {
  // Its stored config lacks the keys added since (train.loss_scale, ...),
  // which then count as their defaults: the run it continues had no loss
  // scaling and one all-reduce call, and neither changes fp32 results.
  const TrainConfig split = tiny("deepqsm-test-resume-v2-b");
  const TrainResult straight = run_training(tiny("deepqsm-test-resume-v2-a"), quiet());
  TrainOptions first = quiet();
  first.steps_override = 4;
  const std::string at4 = split.out_dir + "/checkpoint-00000004.h5";
  REQUIRE(run_training(split, first).checkpoint == split.out_dir + "/checkpoint.h5");
  const CheckpointData v3 = load_checkpoint(at4);
  nlohmann::json old = nlohmann::json::parse(v3.config_json);
  for (const char* key : {"loss_scale", "loss_scale_init", "loss_scale_growth_interval",
                          "allreduce_overlap", "allreduce_bucket_kb"})
    REQUIRE(old["train"].erase(key) == 1);
  test::write_v2_checkpoint(at4, UNet(v3.model), v3, old.dump(2));
  REQUIRE(load_checkpoint(at4).version == 2);
  TrainOptions rest = quiet();
  rest.resume = true;
  const TrainResult resumed = run_training(split, rest);
  CHECK(resumed.resumed_from == 4);
  require_same(load_checkpoint(straight.checkpoint), load_checkpoint(resumed.checkpoint));
}
