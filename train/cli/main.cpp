// The `deepqsm` command line. Each subcommand is in its own file
// (train/cli/commands.h); this file only collects them and turns every failure
// into one line,
// "deepqsm: <message>", on stderr with exit status 1.
#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdio>
#include <exception>
#include <iostream>
#include <new>
#include <sstream>
#include <string>

#include "core/error.h"
#include "train/cli/commands.h"

namespace {

// Must match project(deepqsm VERSION ...) in CMakeLists.txt.
constexpr const char* kVersion = "0.1.0";

constexpr const char* kAbout =
    "deepqsm trains DeepQSM (Bollmann et al., NeuroImage 2019), a 3D U-Net that\n"
    "inverts the dipole convolution of quantitative susceptibility mapping: it maps\n"
    "a local field map to magnetic susceptibility (chi), both in ppm. It learns from\n"
    "purely synthetic data: random cubes and spheres of chi in [-0.2, 0.2] ppm are\n"
    "convolved with the dipole kernel (B0 along z by default) and random patches of\n"
    "(field, chi) pairs are streamed to Adam on an MSE loss. A run is described by a\n"
    "JSON config (docs/config.md lists every key); `deepqsm train` runs one,\n"
    "`deepqsm config check FILE` validates one and `deepqsm config show` prints one\n"
    "with every default filled in.";

// Messages are one line by contract (core/error.h); exceptions from libraries
// may not be, and a second line would break scripts that read stderr.
std::string one_line(std::string s) {
  std::replace(s.begin(), s.end(), '\n', ' ');
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

// A CLI11 usage error, in the same one-line shape as every other failure.
std::string usage_failure(const CLI::App*, const CLI::Error& e) {
  return "deepqsm: " + one_line(e.what()) + " (see deepqsm --help)\n";
}

}  // namespace

int main(int argc, char** argv) {
  // Line by line even when stdout is a file or a pipe (a batch system's log):
  // each progress line is there when it is printed, also if the run dies.
  std::setvbuf(stdout, nullptr, _IOLBF, 0);
  CLI::App app{kAbout, "deepqsm"};
  app.set_version_flag("--version", std::string("deepqsm ") + kVersion);
  app.require_subcommand(1);
  app.failure_message(usage_failure);
  const std::vector<dq::Command> commands = {
      dq::add_train_command(app),  dq::add_config_command(app), dq::add_synth_command(app),
      dq::add_eval_command(app),   dq::add_invert_command(app), dq::add_phantom_command(app),
      dq::add_export_command(app), dq::add_import_command(app), dq::add_proxy_command(app)};
  app.footer(
      "Examples:\n"
      "  deepqsm train                                  # the quick CPU demo\n"
      "  deepqsm train --config configs/deepqsm-paper.json --out runs/paper\n"
      "  deepqsm export runs/paper -o paper.h5            # weights only, for deepqsm-infer\n"
      "  deepqsm config check my.json");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }

  try {
    for (const dq::Command& c : commands)
      if (*c.app) return c.run();
  } catch (const std::bad_alloc&) {
    std::cerr << "deepqsm: out of memory (host RAM): the volume, recipe or batch is too large "
                 "for this machine\n";
    return 1;
  } catch (const std::exception& e) {
    // dq::Error derives from std::exception; both end here with one line.
    std::cerr << "deepqsm: " << one_line(e.what()) << "\n";
    return 1;
  }
  return 0;
}
