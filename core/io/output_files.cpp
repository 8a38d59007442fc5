#include "core/io/output_files.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <mutex>
#include <set>

#include "core/error.h"

namespace dq {

// The temporaries of this process, newest first, for the signal handler. An
// entry is published only once its name is set and is never freed or reused
// (a handler on another thread may be reading it), so the list only grows: a
// few dozen bytes per file written.
struct detail::PendingEntry {
  std::string tmp;
  std::atomic<bool> live{true};
  PendingEntry* next = nullptr;
};

namespace {

using detail::PendingEntry;

std::atomic<PendingEntry*> g_pending{nullptr};
thread_local OutputGroup* t_group = nullptr;
// Groups renaming their files now, and a stop signal that arrived meanwhile:
// a commit half done would leave a mix of new and old outputs, so the signal
// waits for it (renames are quick) and is raised again when it ends.
std::atomic<int> g_committing{0};
std::atomic<int> g_deferred_signal{0};

// Async-signal-safe: reads the published list and calls unlink, signal and
// raise only. The signal is blocked while this runs, so it is delivered
// again, with its default action, when the handler returns.
extern "C" void remove_temporaries_and_stop(int sig) {
  if (g_committing.load(std::memory_order_acquire) > 0) {
    g_deferred_signal.store(sig, std::memory_order_release);
    return;
  }
  for (PendingEntry* e = g_pending.load(std::memory_order_acquire); e; e = e->next)
    if (e->live.load(std::memory_order_acquire)) ::unlink(e->tmp.c_str());
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

// While alive, stop signals wait (above); at the end, one that came is
// raised again, through the handler, once the renames are done or undone.
struct CommitWindow {
  CommitWindow() { g_committing.fetch_add(1, std::memory_order_acq_rel); }
  ~CommitWindow() {
    if (g_committing.fetch_sub(1, std::memory_order_acq_rel) == 1)
      if (const int sig = g_deferred_signal.exchange(0)) ::raise(sig);
  }
  CommitWindow(const CommitWindow&) = delete;
  CommitWindow& operator=(const CommitWindow&) = delete;
};

// For each stop signal still at its default action (checked at every new
// temporary, a few system calls): a handler someone else set (the trainer's
// clean stop, an ignored SIGINT) is left alone, and once installed the
// handler stays, stopping a process with nothing registered as before.
// SIGXFSZ is a file outgrowing `ulimit -f`.
void install_handler() {
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGXFSZ}) {
    struct sigaction old {};
    if (sigaction(sig, nullptr, &old) != 0 || old.sa_handler != SIG_DFL ||
        (old.sa_flags & SA_SIGINFO))
      continue;
    struct sigaction sa {};
    sa.sa_handler = remove_temporaries_and_stop;
    sigemptyset(&sa.sa_mask);
    sigaction(sig, &sa, nullptr);
  }
}

void forget(PendingEntry* e) {
  e->live.store(false, std::memory_order_release);
}

void remove_temporary(PendingEntry* e) {
  std::error_code ec;
  std::filesystem::remove(e->tmp, ec);
  forget(e);
}

// Renames e's temporary onto path; on failure removes it and fails.
void move_into_place(PendingEntry* e, const std::string& path) {
  try {
    check_replaceable(path);
  } catch (...) {
    remove_temporary(e);
    throw;
  }
  std::error_code ec;
  std::filesystem::rename(e->tmp, path, ec);
  if (ec) {
    remove_temporary(e);
    fail(path, ": could not move the finished file into place: ", ec.message());
  }
  forget(e);
}

}  // namespace

void check_replaceable(const std::string& path) {
  struct stat st {};
  if (::lstat(path.c_str(), &st) != 0) return;  // nothing there (or unreachable: the write says)
  const char* kind = nullptr;
  if (S_ISREG(st.st_mode)) return;
  if (S_ISLNK(st.st_mode))
    fail(path,
         ": is a symbolic link; outputs neither replace links nor write through them "
         "(give the link's target, or remove the link)");
  // A folder is refused by the commands' up-front checks and by the rename
  // (OutputGroup::commit, move_into_place), each with its own message.
  if (S_ISDIR(st.st_mode)) return;
  if (S_ISCHR(st.st_mode))
    kind = "character device";
  else if (S_ISBLK(st.st_mode))
    kind = "block device";
  else if (S_ISFIFO(st.st_mode))
    kind = "FIFO";
  else if (S_ISSOCK(st.st_mode))
    kind = "socket";
  else
    kind = "special file";
  fail(path, ": is a ", kind,
       ", not a regular file; outputs only replace regular files "
       "(choose another name)");
}

namespace {
// This machine's name as it goes into a temporary's name: characters other
// than letters, digits, '.', '_' and '-' become '_'.
const std::string& host_tag() {
  static const std::string tag = [] {
    char buf[256] = {};
    if (::gethostname(buf, sizeof buf - 1) != 0 || buf[0] == '\0') return std::string("host");
    std::string h(buf);
    for (char& c : h)
      if (!std::isalnum(static_cast<unsigned char>(c)) && c != '.' && c != '_' && c != '-') c = '_';
    return h;
  }();
  return tag;
}
}  // namespace

std::string temporary_marker() {
  return std::string(kTemporaryTag) + host_tag() + "-" + std::to_string(::getpid());
}

std::string temporary_name(const std::string& path) { return path + temporary_marker(); }

int remove_stale_temporaries(const std::string& folder) {
  namespace fs = std::filesystem;
  // Each folder once per process: a writer of thousands of files in one
  // folder (synth --volumes-out) does not rescan it for every file.
  static std::mutex mutex;
  static std::set<std::string> scanned;
  {
    std::error_code ec;
    const fs::path canon = fs::weakly_canonical(folder.empty() ? "." : folder, ec);
    std::lock_guard<std::mutex> lock(mutex);
    if (!scanned.insert(ec ? folder : canon.string()).second) return 0;
  }
  // Only this machine's temporaries, in the names temporary_name() makes:
  // "<name>.dqtmp-<host>-<pid>" or "<stem>.dqtmp-<host>-<pid>.nii[.gz]". A
  // file of the user's, or another machine's temporary on a shared disk, is
  // never matched.
  const std::string tag = std::string(kTemporaryTag) + host_tag() + "-";
  std::error_code ec;
  const auto now = fs::file_time_type::clock::now();
  int removed = 0;
  for (fs::directory_iterator it(folder.empty() ? "." : folder, ec), end; !ec && it != end;
       it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const size_t at = name.rfind(tag);
    if (at == std::string::npos || at == 0) continue;
    std::string rest = name.substr(at + tag.size());
    for (const char* ext : {".nii.gz", ".nii"}) {
      const std::string e(ext);
      if (rest.size() > e.size() && rest.compare(rest.size() - e.size(), e.size(), e) == 0) {
        rest.resize(rest.size() - e.size());
        break;
      }
    }
    if (rest.empty() || rest.size() > 9 ||
        rest.find_first_not_of("0123456789") != std::string::npos)
      continue;
    const long pid = std::stol(rest);
    if (pid == ::getpid() || !(::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH)) continue;
    std::error_code e2;
    if (!it->is_regular_file(e2) || it->is_symlink(e2)) continue;
    const auto age = now - fs::last_write_time(it->path(), e2);
    if (e2 || age < std::chrono::seconds(kStaleTemporarySeconds)) continue;
    if (fs::remove(it->path(), e2)) ++removed;
  }
  return removed;
}

struct OutputGroup::Held {
  PendingEntry* entry;
  std::string path;
};

PendingFile::PendingFile(std::string path, std::string tmp)
    : path_(std::move(path)), tmp_(std::move(tmp)) {
  check_replaceable(path_);
  remove_stale_temporaries(std::filesystem::path(tmp_).parent_path().string());
  install_handler();
  auto* e = new PendingEntry;
  e->tmp = tmp_;
  e->next = g_pending.load(std::memory_order_relaxed);
  while (!g_pending.compare_exchange_weak(e->next, e, std::memory_order_release,
                                          std::memory_order_relaxed)) {
  }
  entry_ = e;
}

PendingFile::PendingFile(const std::string& path)
    : PendingFile(path, temporary_name(path)) {}

PendingFile::~PendingFile() {
  if (entry_) remove_temporary(entry_);
}

void PendingFile::finish() {
  DQ_CHECK(entry_, "PendingFile::finish() twice for ", path_);
  if (t_group) {
    t_group->held_.push_back({entry_, path_});  // may throw: the file is still ours then
    entry_ = nullptr;
    return;
  }
  PendingEntry* e = entry_;
  entry_ = nullptr;
  move_into_place(e, path_);
}

OutputGroup::OutputGroup() {
  DQ_CHECK(!t_group, "OutputGroup inside another");
  t_group = this;
}

OutputGroup::~OutputGroup() {
  t_group = nullptr;
  if (!committed_)
    for (const Held& h : held_) remove_temporary(h.entry);
}

void OutputGroup::commit() {
  DQ_CHECK(!committed_, "OutputGroup::commit() twice");
  t_group = nullptr;
  committed_ = true;
  const CommitWindow window;
  // A folder made at an output's name since the command checked it would
  // stop the renames part-way; refused before any file is replaced.
  for (const Held& h : held_) {
    std::error_code ec;
    if (std::filesystem::is_directory(h.path, ec)) {
      for (const Held& r : held_) remove_temporary(r.entry);
      fail(h.path, ": is a folder now; none of this command's outputs were written");
    }
  }
  for (size_t i = 0; i < held_.size(); ++i) {
    try {
      move_into_place(held_[i].entry, held_[i].path);
    } catch (...) {
      for (size_t j = i + 1; j < held_.size(); ++j) remove_temporary(held_[j].entry);
      throw;
    }
  }
}

}  // namespace dq
