// libFuzzer harness: the strict JSON training config (train/config.h, on
// core/io/json_read.h), from text.
#include <string>

#include "core/error.h"
#include "tests/fuzz/fuzz_util.h"
#include "train/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  try {
    dq::parse_train_config(text, "fuzz.json");
  } catch (const dq::Error&) {
  }
  return 0;
}
