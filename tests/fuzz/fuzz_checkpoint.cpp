// libFuzzer harness: load_checkpoint (core/nn/checkpoint.h) and the HDF5
// layer under it (core/io/h5io.h), on arbitrary bytes as an .h5 file.
#include "core/error.h"
#include "core/io/h5io.h"
#include "core/nn/checkpoint.h"
#include "tests/fuzz/fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = dq::fuzz::input_file("in.h5", data, size);
  for (const bool weights_only : {true, false}) {
    try {
      dq::load_checkpoint(path, weights_only);
    } catch (const dq::Error&) {
    }
  }
  // A patch file's datasets, as train/patch_source.cpp reads their shapes.
  try {
    dq::H5File f(path, dq::H5File::Mode::read);
    for (const char* name : {"field", "chi"})
      if (f.exists(name)) f.read_floats(name);
  } catch (const dq::Error&) {
  }
  return 0;
}
