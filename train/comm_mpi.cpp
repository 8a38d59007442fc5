// The single-process and MPI communicators, the factory that picks one, and
// the local spawner behind `deepqsm train --gpus N` (train/comm.h).
#include <mpi.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <ctime>
#include <initializer_list>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <utility>
#include <vector>

#include "core/error.h"
#include "core/parallel.h"
#include "train/comm.h"

namespace dq {

namespace {

class SingleCommunicator final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return "single process"; }
  void allreduce_mean(Tensor&) override {}
  void start_mean(Backend&, Tensor&, int64_t, int64_t) override {}
  void wait_all(Backend&) override {}
  void broadcast(Tensor&, int) override {}
  void broadcast_bytes(void*, size_t, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int code) override { std::_Exit(code); }
};

// MPI_Init / MPI_Finalize, shared by whichever communicator uses MPI.
struct MpiSession {
  int rank = 0, size = 1;
  MpiSession() {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) {
      // FUNNELED: only the main thread calls MPI (oneDNN's threads never do).
      int provided = 0;
      if (MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        fail("MPI_Init_thread failed; is this process started by mpirun or srun?");
    }
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  ~MpiSession() {
    int finalised = 0;
    MPI_Finalized(&finalised);
    if (!finalised) MPI_Finalize();
  }
  // Rank among the processes on this node (for picking a GPU), and how many
  // processes share the node.
  int local_rank() const { return on_node(MPI_Comm_rank); }
  int local_size() const { return on_node(MPI_Comm_size); }

 private:
  int on_node(int (*query)(MPI_Comm, int*)) const {
    MPI_Comm node;
    MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank, MPI_INFO_NULL, &node);
    int r = 0;
    query(node, &r);
    MPI_Comm_free(&node);
    return r;
  }
};

void mpi_check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail(what, " failed: ", std::string(msg, static_cast<size_t>(len)));
}

class MpiCommunicator final : public Communicator {
 public:
  explicit MpiCommunicator(std::shared_ptr<MpiSession> s) : s_(std::move(s)) {}
  int rank() const override { return s_->rank; }
  int size() const override { return s_->size; }
  std::string name() const override {
    return "mpi, " + std::to_string(s_->size) + (s_->size == 1 ? " rank" : " ranks");
  }
  void allreduce_mean(Tensor& buf) override {
    DQ_CHECK(buf.device() == Device::cpu, "the MPI communicator reduces host buffers only");
    float* p = buf.f32();
    // MPI counts are int; chunking keeps buffers beyond 2^31 elements correct.
    for (int64_t off = 0; off < buf.numel(); off += INT_MAX) {
      const int n = static_cast<int>(std::min<int64_t>(INT_MAX, buf.numel() - off));
      mpi_check(MPI_Allreduce(MPI_IN_PLACE, p + off, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
                "MPI_Allreduce");
    }
    divide(p, buf.numel());
  }
  void start_mean(Backend&, Tensor& buf, int64_t offset, int64_t count) override {
    DQ_CHECK(buf.device() == Device::cpu, "the MPI communicator reduces host buffers only");
    DQ_CHECK(offset >= 0 && count >= 0 && offset + count <= buf.numel(), "start_mean: range [",
             offset, ", ", offset + count, ") outside a buffer of ", buf.numel());
    float* p = buf.f32() + offset;
    for (int64_t off = 0; off < count; off += INT_MAX) {
      const int n = static_cast<int>(std::min<int64_t>(INT_MAX, count - off));
      MPI_Request r;
      mpi_check(MPI_Iallreduce(MPI_IN_PLACE, p + off, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD, &r),
                "MPI_Iallreduce");
      requests_.push_back(r);
    }
    pending_.emplace_back(p, count);
    // Open MPI advances non-blocking collectives only inside MPI calls (no
    // progress thread); testing here moves the earlier buckets on while the
    // backward pass computes the next one.
    int done = 0;
    mpi_check(MPI_Testall(static_cast<int>(requests_.size()), requests_.data(), &done,
                          MPI_STATUSES_IGNORE),
              "MPI_Testall");
  }
  void wait_all(Backend&) override {
    mpi_check(
        MPI_Waitall(static_cast<int>(requests_.size()), requests_.data(), MPI_STATUSES_IGNORE),
        "MPI_Waitall");
    requests_.clear();
    for (const auto& [p, n] : pending_) divide(p, n);
    pending_.clear();
  }
  void broadcast(Tensor& buf, int root) override {
    DQ_CHECK(buf.device() == Device::cpu, "the MPI communicator broadcasts host buffers only");
    broadcast_bytes(buf.raw(), buf.nbytes(), root);
  }
  void broadcast_bytes(void* data, size_t n, int root) override {
    char* p = static_cast<char*>(data);
    for (size_t off = 0; off < n; off += INT_MAX) {
      const int len = static_cast<int>(std::min<size_t>(INT_MAX, n - off));
      mpi_check(MPI_Bcast(p + off, len, MPI_BYTE, root, MPI_COMM_WORLD), "MPI_Bcast");
    }
  }
  void barrier() override { mpi_check(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier"); }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  // Sum to mean, the same multiply in the blocking and the asynchronous path.
  void divide(float* p, int64_t n) const {
    if (s_->size == 1) return;
    const float inv = 1.0f / static_cast<float>(s_->size);
    for (int64_t i = 0; i < n; ++i) p[i] *= inv;
  }

  std::shared_ptr<MpiSession> s_;
  std::vector<MPI_Request> requests_;                // started, not yet waited for
  std::vector<std::pair<float*, int64_t>> pending_;  // their ranges, to divide after
};

// NCCL ranks bootstrapped over MPI: the NCCL communicator does all the work;
// this only keeps MPI alive until NCCL is torn down (members are destroyed
// in reverse order, NCCL first).
class MpiHostedCommunicator final : public Communicator {
 public:
  MpiHostedCommunicator(std::shared_ptr<MpiSession> s, std::unique_ptr<Communicator> inner)
      : s_(std::move(s)), inner_(std::move(inner)) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string name() const override { return inner_->name() + " (bootstrapped over MPI)"; }
  void allreduce_mean(Tensor& buf) override { inner_->allreduce_mean(buf); }
  void start_mean(Backend& be, Tensor& buf, int64_t offset, int64_t count) override {
    inner_->start_mean(be, buf, offset, count);
  }
  void wait_all(Backend& be) override { inner_->wait_all(be); }
  void broadcast(Tensor& buf, int root) override { inner_->broadcast(buf, root); }
  void broadcast_bytes(void* data, size_t n, int root) override {
    inner_->broadcast_bytes(data, n, root);
  }
  void barrier() override { inner_->barrier(); }
  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);
  }

 private:
  std::shared_ptr<MpiSession> s_;
  std::unique_ptr<Communicator> inner_;
};

int env_int(const char* name, int fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 10);
  if (*end != '\0' || x < 0 || x > INT_MAX) fail("environment variable ", name, "='", v, "' is not a rank");
  return static_cast<int>(x);
}

std::vector<std::string> own_command_line() {
  std::ifstream in("/proc/self/cmdline", std::ios::binary);
  if (!in) fail("--gpus: cannot read /proc/self/cmdline to re-run this command per GPU");
  std::vector<std::string> args;
  std::string arg;
  while (std::getline(in, arg, '\0')) args.push_back(arg);
  if (args.empty()) fail("--gpus: /proc/self/cmdline is empty");
  return args;
}

}  // namespace

namespace {
// The first of these environment variables that holds a non-negative
// integer, or -1.
int first_env_int(std::initializer_list<const char*> names) {
  for (const char* n : names) {
    const char* v = std::getenv(n);
    if (!v || !*v) continue;
    char* end = nullptr;
    const long x = std::strtol(v, &end, 10);
    if (*end == '\0' && x >= 0 && x <= INT_MAX) return static_cast<int>(x);
  }
  return -1;
}
}  // namespace

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE",
                        "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"})
    if (std::getenv(v)) return true;
  return false;
}

std::unique_ptr<Communicator> make_communicator(const std::string& device) {
  const bool gpu = device == "gpu";
  if (std::getenv(kRankEnv)) {
    // A child of spawn_local_ranks: the id is in a file, no MPI at all.
    if (!gpu) fail(kRankEnv, " is set but train.device is not \"gpu\"; --gpus spawns GPU ranks only");
    const int rank = env_int(kRankEnv, 0), size = env_int(kWorldEnv, 1);
    const char* id_file = std::getenv(kNcclIdEnv);
    if (!id_file) fail(kRankEnv, " is set without ", kNcclIdEnv);
    std::vector<char> id(nccl_unique_id_bytes());
    std::ifstream in(id_file, std::ios::binary);
    if (!in.read(id.data(), static_cast<std::streamsize>(id.size())))
      fail(id_file, ": cannot read the NCCL unique id");
    return make_nccl_communicator(rank, size, rank, id.data(), id.size());
  }
  if (!launched_by_mpi()) {
    if (gpu) {
      std::vector<char> id(nccl_unique_id_bytes());
      nccl_new_unique_id(id.data());
      return make_nccl_communicator(0, 1, 0, id.data(), id.size());
    }
    return std::make_unique<SingleCommunicator>();
  }
  // A CUDA-aware MPI may create a context on the current GPU inside
  // MPI_Init; picking this rank's GPU first (from the launcher's node-local
  // rank, when it says) keeps every rank off GPU 0.
  if (gpu) {
    const int local = first_env_int({"OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID",
                                     "MPI_LOCALRANKID", "MV2_COMM_WORLD_LOCAL_RANK",
                                     "PMI_LOCAL_RANK"});
    const int global = first_env_int({"OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK",
                                      "SLURM_PROCID", "MV2_COMM_WORLD_RANK"});
    if (local >= 0) nccl_select_device(std::max(global, 0), local);
  }
  auto session = std::make_shared<MpiSession>();
  if (!gpu) {
    // CPU ranks on one node share its cores: each takes its share of the
    // hardware threads (OMP_NUM_THREADS, when set, decides instead), so one
    // rank's OpenMP threads do not spin on the cores another is computing on.
    if (!std::getenv("OMP_NUM_THREADS")) {
      set_cpu_threads(std::max(1, hardware_threads() / std::max(1, session->local_size())));
    }
    return std::make_unique<MpiCommunicator>(session);
  }
  // MPI only shares the NCCL id; tensors travel over NCCL.
  std::vector<char> id(nccl_unique_id_bytes());
  if (session->rank == 0) nccl_new_unique_id(id.data());
  mpi_check(MPI_Bcast(id.data(), static_cast<int>(id.size()), MPI_BYTE, 0, MPI_COMM_WORLD),
            "MPI_Bcast of the NCCL id");
  auto nccl = make_nccl_communicator(session->rank, session->size, session->local_rank(),
                                     id.data(), id.size());
  return std::make_unique<MpiHostedCommunicator>(session, std::move(nccl));
}

namespace {
volatile sig_atomic_t g_parent_signals = 0;  // SIGTERM/SIGINT received so far
extern "C" void record_parent_signal(int) { g_parent_signals = g_parent_signals + 1; }
}  // namespace

int run_rank_processes(const std::string& exe, const std::vector<std::string>& args, int n,
                       const std::vector<std::string>& extra_env) {
  if (n < 1) fail("--gpus ", n, ": must be at least 1");
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  // Each rank's environment is built here: the child of a fork may only
  // call async-signal-safe functions before exec (NCCL's bootstrap thread
  // already runs in this process), and setenv allocates.
  std::vector<std::string> base;
  for (char** e = environ; *e; ++e) {
    const std::string kv(*e);
    const std::string key = kv.substr(0, kv.find('='));
    bool replaced = key == kRankEnv || key == kWorldEnv;
    for (const std::string& x : extra_env) replaced |= x.compare(0, key.size() + 1, key + "=") == 0;
    if (!replaced) base.push_back(kv);
  }
  std::vector<std::vector<std::string>> rank_env(static_cast<size_t>(n), base);
  std::vector<std::vector<char*>> envp(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) {
    auto& e = rank_env[static_cast<size_t>(r)];
    e.push_back(std::string(kRankEnv) + "=" + std::to_string(r));
    e.push_back(std::string(kWorldEnv) + "=" + std::to_string(n));
    for (const std::string& kv : extra_env) e.push_back(kv);
    for (std::string& kv : e) envp[static_cast<size_t>(r)].push_back(kv.data());
    envp[static_cast<size_t>(r)].push_back(nullptr);
  }
  // SIGTERM or SIGINT to this parent (a time limit, Ctrl-C) is passed on
  // once as SIGTERM: the ranks then stop together after the same step with a
  // checkpoint (train/trainer.h). A second one ends them with SIGKILL.
  // Installed before the fork, so no signal can slip between the two.
  struct sigaction sa {}, old_term {}, old_int {};
  sa.sa_handler = record_parent_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  g_parent_signals = 0;
  sigaction(SIGTERM, &sa, &old_term);
  sigaction(SIGINT, &sa, &old_int);
  std::fflush(nullptr);
  std::vector<pid_t> children;
  for (int r = 0; r < n; ++r) {
    const pid_t pid = fork();
    if (pid < 0) {
      for (pid_t c : children) kill(c, SIGKILL);
      for (pid_t c : children) waitpid(c, nullptr, 0);
      sigaction(SIGTERM, &old_term, nullptr);
      sigaction(SIGINT, &old_int, nullptr);
      fail("--gpus: fork failed for rank ", r);
    }
    if (pid == 0) {
      // exec resets the parent's handlers to the defaults; the rank installs
      // its own.
      execve(exe.c_str(), argv.data(), envp[static_cast<size_t>(r)].data());
      static const char msg[] = "deepqsm: --gpus: exec of a rank failed\n";
      (void)!write(2, msg, sizeof msg - 1);
      _exit(127);
    }
    children.push_back(pid);
  }
  int forwarded = 0;  // signals passed on so far
  int result = 0;
  std::vector<pid_t> running = children;
  auto kill_running = [&](int sig) {
    for (pid_t c : running) kill(c, sig);
  };
  while (!running.empty()) {
    // Polled rather than a blocking wait(): a signal that lands just before
    // a blocking call would not be passed on until some rank ended.
    const int seen = g_parent_signals;
    if (seen > forwarded) {
      kill_running(forwarded == 0 && seen == 1 ? SIGTERM : SIGKILL);
      forwarded = seen;
    }
    int status = 0;
    pid_t done = 0;
    for (pid_t c : running) {
      done = waitpid(c, &status, WNOHANG);
      if (done != 0) break;
    }
    if (done == 0 || (done < 0 && errno == EINTR)) {
      struct timespec ts {0, 20 * 1000 * 1000};
      nanosleep(&ts, nullptr);
      continue;
    }
    if (done < 0) break;  // not our child any more: nothing left to wait for
    running.erase(std::remove(running.begin(), running.end(), done), running.end());
    const int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    // A rank that stopped on the forwarded signal exits 128 + signal after
    // its checkpoint (the others stop at the same step); anything else that
    // is not 0 (a failure, or a rank killed by a signal) would leave the
    // survivors waiting in NCCL for it forever, so they get SIGKILL, since
    // they treat SIGTERM as "finish the step".
    const bool clean_stop =
        forwarded > 0 && WIFEXITED(status) && (code == 128 + SIGTERM || code == 128 + SIGINT);
    if (code != 0 && result == 0) result = code;
    if (code != 0 && !clean_stop) kill_running(SIGKILL);
  }
  sigaction(SIGTERM, &old_term, nullptr);
  sigaction(SIGINT, &old_int, nullptr);
  return result;
}

int spawn_local_ranks(int n) {
  if (n < 1) fail("--gpus ", n, ": must be at least 1");
  const std::vector<std::string> args = own_command_line();
  std::string tmpl = (std::getenv("TMPDIR") ? std::string(std::getenv("TMPDIR")) : "/tmp") +
                     "/deepqsm-nccl-id-XXXXXX";
  const int fd = mkstemp(tmpl.data());
  if (fd < 0) fail("--gpus: cannot create a file for the NCCL id in ", tmpl);
  std::vector<char> id(nccl_unique_id_bytes());
  nccl_new_unique_id(id.data());
  const bool written = write(fd, id.data(), id.size()) == static_cast<ssize_t>(id.size());
  close(fd);
  if (!written) {
    unlink(tmpl.c_str());
    fail("--gpus: cannot write the NCCL id to ", tmpl);
  }

  const int result = run_rank_processes("/proc/self/exe", args, n,
                                        {std::string(kNcclIdEnv) + "=" + tmpl});
  unlink(tmpl.c_str());
  return result;
}

}  // namespace dq
