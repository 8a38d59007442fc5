// PNG writing and slice previews (see core/io/png_io.h).
#include "core/io/png_io.h"

#include <png.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <sstream>

#include "core/error.h"
#include "core/io/output_files.h"

namespace dq {

namespace {

// libpng's default handlers print "libpng error: Write Error" on stderr, a
// second line beside ours; these are silent (write_png reports the failure)
// and jump back, as libpng requires of an error handler.
[[noreturn]] void png_silent_error(png_structp png, png_const_charp) {
  png_longjmp(png, 1);
}
void png_silent_warning(png_structp, png_const_charp) {}

// libpng reports errors through longjmp; the state touched between setjmp
// and a possible longjmp is plain C (FILE*, png structs), so no C++ object
// is skipped over.
bool png_write_file(const char* path, int width, int height, int color_type, int channels,
                    const uint8_t* pixels) {
  FILE* fp = std::fopen(path, "wb");
  if (!fp) return false;
  png_structp png =
      png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, png_silent_error, png_silent_warning);
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info || setjmp(png_jmpbuf(png))) {
    png_destroy_write_struct(&png, &info);
    std::fclose(fp);
    return false;
  }
  png_init_io(png, fp);
  png_set_IHDR(png, info, static_cast<png_uint_32>(width), static_cast<png_uint_32>(height), 8,
               color_type, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  const size_t stride = static_cast<size_t>(width) * static_cast<size_t>(channels);
  for (int y = 0; y < height; ++y)
    png_write_row(png, const_cast<png_bytep>(pixels + static_cast<size_t>(y) * stride));
  png_write_end(png, nullptr);
  png_destroy_write_struct(&png, &info);
  return std::fclose(fp) == 0;
}

void write_png(const std::string& path, int width, int height, int color_type, int channels,
               const uint8_t* pixels) {
  if (width <= 0 || height <= 0) fail(path, ": cannot write an empty image");
  PendingFile out(path);
  if (!png_write_file(out.tmp().c_str(), width, height, color_type, channels, pixels))
    fail(path, ": could not write the PNG file (is the folder writable?)");
  out.finish();
}

// 5x7 glyphs, one byte per row (bit 4 = leftmost column); lower case is
// drawn as upper case, unknown characters as blanks.
struct Glyph {
  char c;
  uint8_t rows[7];
};
constexpr Glyph kFont[] = {
    {'A', {0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'B', {0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E}},
    {'C', {0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E}},
    {'D', {0x1C, 0x12, 0x11, 0x11, 0x11, 0x12, 0x1C}},
    {'E', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F}},
    {'F', {0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10}},
    {'G', {0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F}},
    {'H', {0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11}},
    {'I', {0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'J', {0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C}},
    {'K', {0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11}},
    {'L', {0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F}},
    {'M', {0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11}},
    {'N', {0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11}},
    {'O', {0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}},
    {'P', {0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10}},
    {'Q', {0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D}},
    {'R', {0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11}},
    {'S', {0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E}},
    {'T', {0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04}},
    {'U', {0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E}},
    {'V', {0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04}},
    {'W', {0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A}},
    {'X', {0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11}},
    {'Y', {0x11, 0x11, 0x11, 0x0A, 0x04, 0x04, 0x04}},
    {'Z', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F}},
    {'0', {0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E}},
    {'1', {0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E}},
    {'2', {0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F}},
    {'3', {0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E}},
    {'4', {0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02}},
    {'5', {0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E}},
    {'6', {0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E}},
    {'7', {0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08}},
    {'8', {0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E}},
    {'9', {0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C}},
    {'.', {0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C}},
    {'-', {0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00}},
    {'+', {0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00}},
    {',', {0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08}},
    {':', {0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00}},
    {'(', {0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02}},
    {')', {0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08}},
    {'[', {0x0E, 0x08, 0x08, 0x08, 0x08, 0x08, 0x0E}},
    {']', {0x0E, 0x02, 0x02, 0x02, 0x02, 0x02, 0x0E}},
    {'/', {0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00}},
    {'_', {0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x1F}},
    {'=', {0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00}},
    {'%', {0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03}},
};

const Glyph* find_glyph(char c) {
  if (c >= 'a' && c <= 'z') c = static_cast<char>(c - 'a' + 'A');
  for (const Glyph& g : kFont)
    if (g.c == c) return &g;
  return nullptr;
}

struct Canvas {
  int w = 0, h = 0;
  std::vector<uint8_t> px;  // gray, rows top to bottom
  void set(int x, int y, uint8_t v) {
    if (x >= 0 && x < w && y >= 0 && y < h)
      px[static_cast<size_t>(y) * static_cast<size_t>(w) + static_cast<size_t>(x)] = v;
  }
  // Text at (x, y) top-left, each font pixel drawn as scale x scale.
  void text(int x, int y, const std::string& s, int scale, uint8_t v) {
    for (char c : s) {
      if (const Glyph* g = find_glyph(c))
        for (int r = 0; r < 7; ++r)
          for (int col = 0; col < 5; ++col)
            if (g->rows[r] & (0x10 >> col))
              for (int dy = 0; dy < scale; ++dy)
                for (int dx = 0; dx < scale; ++dx)
                  set(x + (col * scale) + dx, y + r * scale + dy, v);
      x += 6 * scale;
    }
  }
};

uint8_t to_gray(float v, float lo, float hi) {
  if (!std::isfinite(v)) return 0;
  const float t = (v - lo) / (hi - lo);
  return static_cast<uint8_t>(std::lround(255.0f * std::clamp(t, 0.0f, 1.0f)));
}

std::string fmt_window(float lo, float hi) {
  std::ostringstream os;
  os.precision(3);
  os << "[" << lo << ", " << hi << "]";
  return os.str();
}

}  // namespace

void write_png_gray(const std::string& path, int width, int height, const uint8_t* pixels) {
  write_png(path, width, height, PNG_COLOR_TYPE_GRAY, 1, pixels);
}

void write_png_rgb(const std::string& path, int width, int height, const uint8_t* rgb) {
  write_png(path, width, height, PNG_COLOR_TYPE_RGB, 3, rgb);
}

std::pair<float, float> robust_window(const float* data, int64_t n, double percentile) {
  std::vector<float> a;
  a.reserve(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i)
    if (std::isfinite(data[i]) && data[i] != 0.0f) a.push_back(std::fabs(data[i]));
  if (a.empty()) return {-1e-6f, 1e-6f};
  const double q = std::clamp(percentile, 0.0, 100.0) / 100.0;
  const size_t k =
      std::min(a.size() - 1, static_cast<size_t>(q * static_cast<double>(a.size() - 1)));
  std::nth_element(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(k), a.end());
  const float w = std::max(a[k], 1e-6f);
  return {-w, w};
}

void write_slices_png(const std::string& path, const std::vector<PreviewRow>& rows) {
  if (rows.empty()) fail(path, ": nothing to preview");
  int64_t side = 0;  // the largest side, so every panel fits one square cell
  for (const PreviewRow& r : rows) {
    if (!r.data || r.dims.numel() <= 0) fail(path, ": preview row '", r.title, "' has no data");
    side = std::max({side, r.dims.nx, r.dims.ny, r.dims.nz});
  }
  const int zoom = static_cast<int>(std::max<int64_t>(1, 192 / side));  // small volumes enlarged
  const int cell = static_cast<int>(side) * zoom;
  const int gap = 4, font = cell >= 256 ? 2 : 1, strip = 7 * font + 6;
  Canvas cv;
  cv.w = 3 * cell + 4 * gap;
  cv.h = static_cast<int>(rows.size()) * (strip + cell + gap) + gap;
  cv.px.assign(static_cast<size_t>(cv.w) * static_cast<size_t>(cv.h), 24);

  int y0 = gap;
  for (const PreviewRow& r : rows) {
    cv.text(gap, y0 + 3, r.title + " " + fmt_window(r.lo, r.hi), font, 230);
    const int top = y0 + strip;
    const Dims3& d = r.dims;
    auto val = [&](int64_t z, int64_t y, int64_t x) { return r.data[(z * d.ny + y) * d.nx + x]; };
    // (panel, width, height, sampler(u, v) with v counted from the bottom)
    struct Panel {
      int64_t w, h;
      std::function<float(int64_t, int64_t)> at;
    };
    const Panel panels[3] = {
        {d.nx, d.ny, [&](int64_t u, int64_t v) { return val(d.nz / 2, v, u); }},
        {d.nx, d.nz, [&](int64_t u, int64_t v) { return val(v, d.ny / 2, u); }},
        {d.ny, d.nz, [&](int64_t u, int64_t v) { return val(v, u, d.nx / 2); }},
    };
    for (int p = 0; p < 3; ++p) {
      const Panel& pn = panels[p];
      const int left = gap + p * (cell + gap) + (cell - static_cast<int>(pn.w) * zoom) / 2;
      const int ptop = top + (cell - static_cast<int>(pn.h) * zoom) / 2;
      for (int64_t v = 0; v < pn.h; ++v)
        for (int64_t u = 0; u < pn.w; ++u) {
          const uint8_t g = to_gray(pn.at(u, v), r.lo, r.hi);
          const int py = ptop + static_cast<int>(pn.h - 1 - v) * zoom;  // up = increasing index
          for (int dy = 0; dy < zoom; ++dy)
            for (int dx = 0; dx < zoom; ++dx)
              cv.set(left + static_cast<int>(u) * zoom + dx, py + dy, g);
        }
    }
    y0 += strip + cell + gap;
  }
  write_png_gray(path, cv.w, cv.h, cv.px.data());
}

}  // namespace dq
