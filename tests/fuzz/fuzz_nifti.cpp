// libFuzzer harness: read_nifti (core/io/nifti_io.h) on NIfTI-1/2 files,
// plain or gzip-compressed (chosen by the input's first two bytes).
#include "core/error.h"
#include "core/io/nifti_io.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const bool gz = size >= 2 && data[0] == 0x1f && data[1] == 0x8b;
  const std::string path = dq::fuzz::input_file(gz ? "in.nii.gz" : "in.nii", data, size);
  try {
    const dq::Volume v = dq::read_nifti(path);
    // What a reader promises: the grid it reports is the data it holds.
    if (static_cast<int64_t>(v.data.size()) != v.numel()) __builtin_trap();
  } catch (const dq::Error&) {
  }
  return 0;
}
