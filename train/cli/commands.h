// The `deepqsm` subcommands. Each lives in its own file (train/cli/<verb>.cpp): it adds
// itself and its options to the app and returns how to run it once parsed.
// main.cpp only collects them, so adding a verb touches this list and main.
#pragma once
#include <CLI/CLI.hpp>
#include <functional>

namespace dq {

struct Command {
  CLI::App* app = nullptr;    // the subcommand, to ask whether it was chosen
  std::function<int()> run;   // its action; returns the exit status
};

Command add_train_command(CLI::App& app);   // train.cpp
Command add_config_command(CLI::App& app);  // train.cpp
Command add_synth_command(CLI::App& app);  // synth.cpp
Command add_eval_command(CLI::App& app);  // eval.cpp
Command add_invert_command(CLI::App& app);  // invert.cpp
Command add_phantom_command(CLI::App& app);  // phantom.cpp
Command add_export_command(CLI::App& app);  // export.cpp
Command add_import_command(CLI::App& app);  // import.cpp
Command add_proxy_command(CLI::App& app);  // proxy.cpp

}  // namespace dq
