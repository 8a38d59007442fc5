// The stages of deepqsm-infer, in the order run_inference (infer/run.cpp)
// calls them. Each takes what the stages before it made and returns what
// the next ones need, as the types below; each prints its own progress lines.
//
//   check_options     infer/inputs.cpp    options and output paths, before any work
//   read_inputs       infer/inputs.cpp    the model, the field and the mask
//   convert_units     infer/inputs.cpp    the field to ppm
//   fix_geometry      infer/geometry.cpp  an isotropic grid with B0 along z
//   predict           infer/predict.cpp   the U-Net (scales, flips, padding or tiles)
//   restore_geometry  infer/geometry.cpp  chi back on the input's grid, masked
//   refine            infer/refine.cpp    data consistency (TV-ADMM or CG)
//   write_outputs     infer/outputs.cpp   the chi map and the preview, together
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/io/nifti_io.h"
#include "core/nn/checkpoint.h"
#include "core/qsm/volume_ops.h"
#include "infer/run.h"

namespace dq {

// "160x160x160" (x first, as users read a grid) and "1 x 1 x 1.2".
std::string dims_str(const Dims3& d);
std::string vec_str(const Vec3& v);

// Fails on an option out of range or an output that cannot be written, and
// applies --threads.
void check_options(const InferOptions& opt);

// What the command reads, checked: the model (first, so a bad model file
// fails before minutes of work), the field as stored, the unit it is in,
// and the mask with the field's NaN voxels taken out of it.
struct InferInputs {
  std::string model_path;
  CheckpointData model;
  Volume field;  // the values as read; ppm after convert_units
  FieldUnit unit = FieldUnit::ppm;
  double to_ppm = 1.0;        // field_ppm = to_ppm * field as read
  std::vector<uint8_t> mask;  // (nz, ny, nx), 1 inside; all 1 without --mask
  MaskedField masked;         // NaN voxels dropped from the mask, voxels left inside
};
InferInputs read_inputs(const InferOptions& opt);

// The field in ppm (fails when a value overflows float), then what was read
// and the unit, on stdout.
void convert_units(InferInputs& in, const InferOptions& opt);

// The grid the network works on: the input's own, or an isotropic one with
// B0 along z onto which the field and the mask were resampled.
struct WorkGeometry {
  Grid input, work;
  Mat3 R{1, 0, 0, 0, 1, 0, 0, 0, 1};  // input axes -> work axes (R b = z)
  bool resampled = false;
  std::vector<float> field;   // on the work grid; empty when not resampled
  std::vector<uint8_t> mask;  // on the work grid; empty when not resampled
};
WorkGeometry fix_geometry(const InferInputs& in, const InferOptions& opt);
// The field the network sees: resampled, or the input's own.
const std::vector<float>& work_field(const InferInputs& in, const WorkGeometry& geo);

// The network's chi on the work grid. The backend, its weights and its
// buffers are gone when this returns, so the refinement has the memory.
struct Prediction {
  std::vector<float> chi;  // work grid, unmasked
  bool gpu = false;        // the network ran on the GPU
  double seconds = 0;
};
Prediction predict(const InferInputs& in, const WorkGeometry& geo, const InferOptions& opt);

// chi on the input's grid (resampled back when the work grid differs),
// zero outside the mask.
std::vector<float> restore_geometry(std::vector<float> work_chi, const WorkGeometry& geo,
                                    const InferInputs& in);

// Host memory still available (MemAvailable), for the estimates.
double available_memory_bytes();
// Fails, before the network runs, when --refine's padded grid would not fit
// in the host memory available, with the estimate and what to change.
void check_refine_fits(const InferInputs& in, const InferOptions& opt);

// --refine iterations of data consistency on chi in place (nothing when 0);
// returns the seconds it took.
double refine(std::vector<float>& chi, const InferInputs& in, const InferOptions& opt, bool gpu);

// The chi map (with the input's header) and the preview, both or neither.
// Fails when chi holds NaN or infinite voxels.
void write_outputs(const std::vector<float>& chi, const InferInputs& in, const InferOptions& opt);

}  // namespace dq
