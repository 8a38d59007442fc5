// Shared by the libFuzzer harnesses (scripts/fuzz.sh): the readers take
// paths, so each input is written to a file in a private folder first.
// A dq::Error is the expected answer to a bad file; anything else (a crash,
// a sanitizer report, another exception) is a finding.
#pragma once
#include <sys/stat.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <fstream>
#include <string>

namespace dq::fuzz {

// The file `name` in a folder of this process, holding data[0, size).
inline std::string input_file(const char* name, const uint8_t* data, size_t size) {
  static const std::string dir = [] {
    std::string d = "/tmp/deepqsm-fuzz-" + std::to_string(::getpid());
    ::mkdir(d.c_str(), 0700);
    return d;
  }();
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  return path;
}

}  // namespace dq::fuzz
