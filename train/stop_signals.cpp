#include "train/stop_signals.h"

#include <cstdlib>

#include "train/comm.h"

namespace dq {

namespace {

// Set by the handler, read once per step.
volatile sig_atomic_t g_stop_signal = 0;

extern "C" void record_stop_signal(int sig) {
  g_stop_signal = sig;
}

}  // namespace

StopSignals::StopSignals() {
  g_stop_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = record_stop_signal;
  sigemptyset(&sa.sa_mask);
  const bool spawned_rank = std::getenv(kRankEnv) != nullptr;
  sa.sa_flags = spawned_rank ? SA_RESTART : SA_RESETHAND | SA_RESTART;
  sigaction(SIGTERM, &sa, &old_term_);
  if (spawned_rank) sa.sa_handler = SIG_IGN;
  sigaction(SIGINT, &sa, &old_int_);
}

StopSignals::~StopSignals() {
  sigaction(SIGTERM, &old_term_, nullptr);
  sigaction(SIGINT, &old_int_, nullptr);
}

int stop_signal() {
  return g_stop_signal;
}

}  // namespace dq
