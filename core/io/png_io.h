// PNG output (libpng) and the slice preview used by `deepqsm-infer --preview`
// and any command that wants a quick look at volumes: one row per volume,
// with its central axial, coronal and sagittal slices side by side, a grey
// window, and a title line drawn in a 5x7 bitmap font.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "core/dims.h"

namespace dq {

// 8-bit images, rows top to bottom; written to a temporary file and renamed.
void write_png_gray(const std::string& path, int width, int height, const uint8_t* pixels);
void write_png_rgb(const std::string& path, int width, int height, const uint8_t* rgb);

// One row of a preview: a (nz, ny, nx) volume, x fastest, shown with values
// in [lo, hi] mapped to black..white (clipped outside).
struct PreviewRow {
  std::string title;  // e.g. "field (ppm)"; the window is appended
  const float* data = nullptr;
  Dims3 dims;
  float lo = -0.1f, hi = 0.1f;
};

// A symmetric window [-w, w] with w the `percentile` (0..100) of |v| over the
// non-zero finite voxels (zeros are usually outside the mask); 1e-6 when
// there are none.
std::pair<float, float> robust_window(const float* data, int64_t n, double percentile = 99.0);

// Draws every row's central slices: axial (z = nz/2; x right, y up),
// coronal (y = ny/2; x right, z up) and sagittal (x = nx/2; y right, z up),
// in voxels (no aspect correction), small volumes enlarged by an integer factor.
void write_slices_png(const std::string& path, const std::vector<PreviewRow>& rows);

}  // namespace dq
