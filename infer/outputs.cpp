// deepqsm-infer's last stage: the chi map and its preview, written together
// (infer/stages.h; whole-or-absent files are core/io/output_files.h).
#include <cstdio>

#include "core/io/output_files.h"
#include "core/io/png_io.h"
#include "infer/stages.h"

namespace dq {

void write_outputs(const std::vector<float>& chi, const InferInputs& in, const InferOptions& opt) {
  require_finite_result(chi, "chi");
  const Volume& field = in.field;
  const int64_t n = field.numel();
  // The preview and the map appear together or not at all: if either
  // cannot be written, both old files stay as they were.
  OutputGroup outputs;
  if (!opt.preview_path.empty()) {
    const auto fw = robust_window(field.data.data(), n);
    const auto cw = robust_window(chi.data(), n);
    write_slices_png(opt.preview_path,
                     {{"field (ppm)", field.data.data(), field.dims(), fw.first, fw.second},
                      {"chi (ppm)", chi.data(), field.dims(), cw.first, cw.second}});
  }
  write_nifti(opt.out_path, field, chi.data());
  outputs.commit();
  if (!opt.preview_path.empty())
    std::printf("preview: %s (central axial, coronal, sagittal slices)\n",
                opt.preview_path.c_str());
  std::printf("output: %s (chi, ppm, float32, the input's header and affine)\n",
              opt.out_path.c_str());
}

}  // namespace dq
