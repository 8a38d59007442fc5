// Outputs that are whole or absent. Every file a command writes goes to a
// temporary name beside it and is renamed into place when finished, so a
// failure (full disk, bad input found late, Ctrl-C) never leaves a
// half-written file where the user expects a result, nor destroys the file
// that was there before.
//
// PendingFile owns one such temporary: it is removed if the command fails
// (an exception unwinds past it) or is stopped by SIGINT, SIGTERM, SIGHUP or
// SIGXFSZ (a handler, installed, whenever a temporary is made, for each of
// those signals that has no other handler, removes every registered
// temporary and then lets the signal end the process as it would have).
// SIGKILL leaves the temporary behind, as can a signal handled on another
// thread in the instant a temporary is being created; never the final file
// half-written. These are guarantees against the process failing; against
// power loss only checkpoints are fsynced.
//
// OutputGroup holds back the renames of the files one command writes
// together (a phantom's field, chi and mask; synth's volumes and patch file)
// until all of them are finished, so a failure part-way leaves the earlier
// outputs as they were instead of a mix of this run and the last. A stop
// signal during the renames waits until they are done.
//
// What an output may replace: nothing, or a regular file. A symbolic link
// (which a rename would replace, not write through), a character or block
// device, a FIFO or a socket at an output's name is refused before anything
// is written (check_replaceable, called by every PendingFile and again just
// before its rename), so /dev/null or a link into another tree is never
// turned into a regular file.
//
// Leftovers: a process killed by SIGKILL (or a power loss) leaves its
// temporaries ("<name>.dqtmp-<host>-<pid>", "<stem>.dqtmp-<host>-<pid>.nii.gz").
// The first PendingFile of a process in a folder removes those there that
// this machine made, whose process no longer exists and which nobody has
// written for kStaleTemporarySeconds. Files of other names (the user's) and
// other machines' temporaries on a shared disk are never touched.
#pragma once
#include <string>
#include <vector>

namespace dq {

namespace detail {
struct PendingEntry;  // a temporary the signal handler knows of
}  // namespace detail

// Fails naming `path` when something other than a regular file is there.
void check_replaceable(const std::string& path);

constexpr long kStaleTemporarySeconds = 600;
constexpr const char* kTemporaryTag = ".dqtmp-";
// ".dqtmp-<host>-<pid>": what this process adds to an output's name for its
// temporary.
std::string temporary_marker();
// `path` + temporary_marker().
std::string temporary_name(const std::string& path);
// Removes the stale temporaries (above) in `folder`, the first time it is
// called for that folder in this process; returns how many.
int remove_stale_temporaries(const std::string& folder);

class PendingFile {
 public:
  // `tmp` is where the caller writes; `path` is where it belongs. Both in
  // one folder (a rename does not cross file systems), and the pid in the
  // temporary's name so that two processes never share one.
  PendingFile(std::string path, std::string tmp);
  // The temporary temporary_name(path).
  explicit PendingFile(const std::string& path);
  ~PendingFile();  // removes the temporary unless finish() moved it
  PendingFile(const PendingFile&) = delete;
  PendingFile& operator=(const PendingFile&) = delete;

  const std::string& path() const { return path_; }
  const std::string& tmp() const { return tmp_; }

  // Moves the finished temporary onto path(): now, or when the OutputGroup
  // open on this thread commits. Fails in one line naming path() when the
  // rename fails (the temporary is then removed).
  void finish();

 private:
  std::string path_, tmp_;
  detail::PendingEntry* entry_ = nullptr;  // null once moved or handed to a group
};

// While one is open on a thread, PendingFile::finish() on that thread defers
// its rename to commit(). Not nested.
class OutputGroup {
 public:
  OutputGroup();
  ~OutputGroup();  // removes the temporaries of a group that did not commit
  OutputGroup(const OutputGroup&) = delete;
  OutputGroup& operator=(const OutputGroup&) = delete;

  // Renames every finished file into place, in the order finished. A folder
  // at any output's name fails before the first rename; another failing
  // rename (rare once every write succeeded: the folders were checked up
  // front) stops there with one line, and the files not yet moved are
  // removed: the one case that leaves a mix. SIGINT, SIGTERM, SIGHUP wait
  // for the renames, then stop the process.
  void commit();

 private:
  friend class PendingFile;
  struct Held;
  std::vector<Held> held_;
  bool committed_ = false;
};

}  // namespace dq
