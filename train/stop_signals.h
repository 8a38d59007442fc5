// SIGTERM and SIGINT (a batch system's time limit, Ctrl-C) ask a training
// run to stop after the step in progress, with a checkpoint of that step.
#pragma once
#include <signal.h>

namespace dq {

// While one exists, SIGTERM and SIGINT are recorded instead of ending the
// process; the handler resets itself (SA_RESETHAND), so a second signal
// ends the process as usual. A rank started by `--gpus N` ignores SIGINT
// (Ctrl-C reaches the parent too, which forwards it as one SIGTERM,
// spawn_local_ranks) and keeps its SIGTERM handler: a signal to the whole
// process group (timeout(1), a batch system) reaches it directly and again
// through the parent, and the second must not kill it before its
// checkpoint. The parent escalates to SIGKILL on a second signal of its own.
class StopSignals {
 public:
  StopSignals();   // clears any earlier request
  ~StopSignals();  // restores the handlers it found
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct sigaction old_term_ {
  }, old_int_{};
};

// The signal that asked this process to stop, 0 while none has.
int stop_signal();

}  // namespace dq
