// The deepqsm-infer pipeline (infer/run.h): its stages, in order. Each is a
// function of infer/stages.h with its own file; this one only strings them
// together and times them.
#include "infer/run.h"

#include <chrono>
#include <cstdio>
#include <string>

#include "infer/stages.h"

namespace dq {

int run_inference(const InferOptions& opt) {
  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  check_options(opt);
  InferInputs in = read_inputs(opt);
  check_refine_fits(in, opt);
  convert_units(in, opt);
  const WorkGeometry geo = fix_geometry(in, opt);
  Prediction net = predict(in, geo, opt);
  std::vector<float> chi = restore_geometry(std::move(net.chi), geo, in);
  const double refine_secs = refine(chi, in, opt, net.gpu);
  write_outputs(chi, in, opt);
  const int64_t n_nan = in.masked.nan;
  std::printf(
      "done in %.1f s (network %.1f s, refinement %.1f s, the rest reading, writing and "
      "resampling)%s\n",
      std::chrono::duration<double>(Clock::now() - t0).count(), net.seconds, refine_secs,
      n_nan > 0 ? ("; " + std::to_string(n_nan) + " NaN voxels set to 0").c_str() : "");
  return 0;
}

}  // namespace dq
