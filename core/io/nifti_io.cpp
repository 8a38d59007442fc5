// NIfTI I/O through nifti_clib (see core/io/nifti_io.h for the contract).
#include "core/io/nifti_io.h"

#include <nifti2_io.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <vector>

#include "core/dims.h"
#include "core/error.h"
#include "core/io/output_files.h"

namespace dq {

// The header of the file a volume came from, data detached (nim->data null).
struct NiftiHeader {
  nifti_image* nim = nullptr;
  ~NiftiHeader() {
    if (nim) nifti_image_free(nim);
  }
};

namespace {

struct NimDeleter {
  void operator()(nifti_image* p) const {
    if (p) nifti_image_free(p);
  }
};
using NimPtr = std::unique_ptr<nifti_image, NimDeleter>;

// nifti_clib reports problems on stderr at debug level >= 1, in several
// lines; we report one line of our own instead.
void quiet_nifti() {
  nifti_set_debug_level(0);
}

// Some nifti_clib errors reach stderr whatever the debug level ("** ERROR
// (nifti_image_write_hdr_img2): cannot open output file ..."), a second line
// beside ours. While one of these lives, file descriptor 2 points at a
// temporary file; reason() restores stderr and returns what nifti_clib
// wrote, for our own message. (Reading and writing NIfTI happen on the
// command's main thread, which prints nothing meanwhile.)
class CapturedStderr {
 public:
  CapturedStderr() {
    std::fflush(stderr);
    file_ = std::tmpfile();
    if (!file_) return;
    saved_ = ::dup(2);
    if (saved_ < 0 || ::dup2(::fileno(file_), 2) < 0) restore();
  }
  ~CapturedStderr() {
    restore();
    if (file_) std::fclose(file_);
  }
  CapturedStderr(const CapturedStderr&) = delete;
  CapturedStderr& operator=(const CapturedStderr&) = delete;

  // " (nifti_clib: <its first line, without the '** ERROR' prefix>)", or "".
  std::string reason() {
    restore();
    if (!file_) return "";
    std::rewind(file_);
    char buf[256] = {};
    if (!std::fgets(buf, sizeof buf, file_)) return "";
    std::string line(buf);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r')) line.pop_back();
    for (const char* prefix : {"** ERROR: ", "** ERROR ", "** "})
      if (line.rfind(prefix, 0) == 0) {
        line.erase(0, std::strlen(prefix));
        break;
      }
    // "(nifti_image_write_hdr_img2): cannot open ...": the function name goes too.
    if (!line.empty() && line.front() == '(') {
      const size_t end = line.find("): ");
      if (end != std::string::npos) line.erase(0, end + 3);
    }
    return line.empty() ? "" : " (nifti_clib: " + line + ")";
  }

 private:
  void restore() {
    if (saved_ < 0) return;
    std::fflush(stderr);
    ::dup2(saved_, 2);
    ::close(saved_);
    saved_ = -1;
  }
  std::FILE* file_ = nullptr;
  int saved_ = -1;
};

// deflate expands at most 1032 times; a little margin for the gzip framing.
constexpr uint64_t kMaxGzipRatio = 1040;

// Whether a finished .nii.gz decompresses to at least `need` bytes without
// a zlib error: nifti_image_write reports nothing, and on a full disk it
// leaves a gzip stream cut short, which a size check cannot tell.
bool gz_complete(const std::string& path, int64_t need) {
  std::vector<char> buf(size_t{1} << 20);
  gzFile g = gzopen(path.c_str(), "rb");
  if (!g) return false;
  int64_t total = 0;
  int got = 0;
  while ((got = gzread(g, buf.data(), static_cast<unsigned>(buf.size()))) > 0) total += got;
  const bool closed = gzclose(g) == Z_OK;  // always closed, also after a read error
  return got == 0 && closed && total >= need;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The extension that picks nifti_clib's output format; anything else is refused
// so that "chi.nii.gz.bak" never silently becomes an uncompressed file.
std::string output_extension(const std::string& path) {
  if (ends_with(path, ".nii.gz")) return ".nii.gz";
  if (ends_with(path, ".nii")) return ".nii";
  fail(path, ": output file name must end in .nii or .nii.gz");
}

double to_mm(int xyz_units) {
  switch (xyz_units) {
    case NIFTI_UNITS_METER: return 1000.0;
    case NIFTI_UNITS_MICRON: return 1e-3;
    default: return 1.0;  // mm, or unknown (the common case for unset units)
  }
}

template <typename T>
void convert(const void* src, int64_t n, double slope, double inter, float* dst) {
  const T* s = static_cast<const T*>(src);
  for (int64_t i = 0; i < n; ++i)
    dst[i] = static_cast<float>(static_cast<double>(s[i]) * slope + inter);
}

std::array<double, 16> flat(const nifti_dmat44& m) {
  std::array<double, 16> a{};
  for (int r = 0; r < 4; ++r)
    for (int c = 0; c < 4; ++c) a[static_cast<size_t>(r * 4 + c)] = m.m[r][c];
  return a;
}

// Writes nim (its data pointing at caller memory) to path via a temporary
// file in the same folder, then renames it into place (core/io/output_files.h).
void write_via_temp(nifti_image* nim, const std::string& path) {
  const std::string ext = output_extension(path);
  const std::string stem = path.substr(0, path.size() - ext.size());
  PendingFile out(path, stem + temporary_marker() + ext);
  const std::string& tmp = out.tmp();
  std::error_code ec;
  std::filesystem::remove(tmp, ec);
  if (nifti_set_filenames(nim, tmp.c_str(), 0, 1) != 0)
    fail(path, ": cannot use this file name for a NIfTI file");
  nim->nifti_type =
      nim->nifti_type == NIFTI_FTYPE_NIFTI2_1 || nim->nifti_type == NIFTI_FTYPE_NIFTI2_2
          ? NIFTI_FTYPE_NIFTI2_1
          : NIFTI_FTYPE_NIFTI1_1;
  nifti_set_iname_offset(nim, nim->nifti_type == NIFTI_FTYPE_NIFTI2_1 ? 2 : 1);
  CapturedStderr nifti_says;
  nifti_image_write(nim);
  // nifti_image_write returns nothing; a missing, short or (gzip) cut-short
  // file is how a failure (unwritable folder, full disk) shows.
  struct stat st {};
  const int64_t need = nim->iname_offset + nim->nvox * nim->nbyper;
  const bool gz = ext == ".nii.gz";
  if (::stat(tmp.c_str(), &st) != 0 || st.st_size == 0 || (!gz && st.st_size < need) ||
      (gz && !gz_complete(tmp, need)))
    fail(path, ": could not write the file (is the folder writable and the disk not full?)",
         nifti_says.reason());
  nifti_says.reason();  // stderr back before anything else can fail
  out.finish();
}

// write_via_temp with the image's data borrowed from `data` for the call:
// nifti_clib only reads it when writing (the cast is to its C API), and the
// header never keeps the pointer, thrown or not.
void write_data_via_temp(nifti_image* nim, const float* data, const std::string& path) {
  nim->data = const_cast<float*>(data);
  try {
    write_via_temp(nim, path);
  } catch (...) {
    nim->data = nullptr;
    throw;
  }
  nim->data = nullptr;
}

// The raw voxel bytes, in this CPU's byte order. Read with znzlib rather
// than nifti_image_load, which silently replaces NaN and Inf floats by 0:
// inference must see them (NaN is masked out and counted, Inf refused).
std::vector<unsigned char> read_voxels(const nifti_image& h, const std::string& path) {
  // h.nvox was checked against the stored dims (read_nifti) and is far
  // below 2^63 / 16, so this product cannot wrap.
  const size_t bytes = static_cast<size_t>(h.nvox) * static_cast<size_t>(h.nbyper);
  // A file shorter than its header's grid is truncated or forged: say so
  // before allocating what the header claims (600^3 voxels took 0.9 GB). A
  // gzip stream expands at most kMaxGzipRatio times (deflate's limit is
  // 1032:1), which bounds what a .nii.gz can hold.
  struct stat st {};
  const bool gz = nifti_is_gzfile(h.iname);
  const uint64_t need = static_cast<uint64_t>(h.iname_offset) + bytes;
  if (::stat(h.iname, &st) == 0) {
    const uint64_t size = static_cast<uint64_t>(st.st_size);
    if (!gz && size < need)
      fail(path, ": the voxel data could not be read (truncated or corrupt file: ", size,
           " bytes, the header's grid needs ", need, ")");
    if (gz && size * kMaxGzipRatio < need)
      fail(path, ": the header's grid needs ", need, " bytes, more than a gzip file of ", size,
           " bytes can hold (truncated file or damaged header)");
  }
  std::vector<unsigned char> raw(bytes);
  znzFile fp = znzopen(h.iname, "rb", nifti_is_gzfile(h.iname));
  if (znz_isnull(fp)) fail(path, ": cannot open the voxel data (", h.iname, ")");
  // znzseek returns fseek's 0 or gzseek's new offset; -1 on failure either way.
  const bool ok = znzseek(fp, static_cast<znz_off_t>(h.iname_offset), SEEK_SET) >= 0 &&
                  znzread(raw.data(), 1, bytes, fp) == bytes;
  znzclose(fp);
  if (!ok) fail(path, ": the voxel data could not be read (truncated or corrupt file)");
  if (h.byteorder != nifti_short_order() && h.swapsize > 1)
    nifti_swap_Nbytes(h.nvox, h.swapsize, raw.data());
  return raw;
}

// The header's dim and pixdim as stored. nifti_clib's reader replaces a
// voxel size that is not positive (0, negative, NaN) by 1 without a word
// (a dim < 1 it mostly refuses itself); a field map's voxel size is physics
// (the dipole kernel's k grid), so read_nifti checks the stored values.
struct RawGeometry {
  bool ok = false;
  std::array<int64_t, 8> dim{};
  std::array<double, 8> pixdim{};
};
// `swap`: the file's byte order is not this CPU's (nifti_read_header returns
// the bytes as stored; nifti_image_read swapped its own copy).
RawGeometry raw_geometry(const std::string& path, bool swap) {
  RawGeometry g;
  int nver = 0;
  void* raw = nifti_read_header(path.c_str(), &nver, 0);
  if (!raw) return g;
  if (swap) swap_nifti_header(raw, nver);
  if (nver == 2) {
    const auto* h = static_cast<const nifti_2_header*>(raw);
    for (int i = 0; i < 8; ++i) g.dim[i] = h->dim[i], g.pixdim[i] = h->pixdim[i];
  } else {
    const auto* h = static_cast<const nifti_1_header*>(raw);
    for (int i = 0; i < 8; ++i) g.dim[i] = h->dim[i], g.pixdim[i] = h->pixdim[i];
  }
  std::free(raw);
  g.ok = true;
  return g;
}

// nifti_image_read trusts a NIfTI-2 header's dim[0] (in the byte order its
// sizeof_hdr gives): one outside 1..7 overflowed its stack (SIGSEGV, found
// twice by tests/fuzz/fuzz_nifti.cpp). The raw header, read as stored, is checked
// first; "" when it may be handed on, else what is wrong.
std::string raw_header_problem(const std::string& path) {
  int nver = 0;
  void* raw = nifti_read_header(path.c_str(), &nver, 0);
  if (!raw) return "";  // not a header at all: nifti_image_read says so
  int64_t dim0 = 0, swapped = 0;
  if (nver == 2) {
    // NIfTI-2's byte order is decided by sizeof_hdr (540 as stored: this
    // CPU's), so dim[0] must be 1..7 in that order, not merely in either.
    const auto* h = static_cast<const nifti_2_header*>(raw);
    int64_t s = h->dim[0];
    nifti_swap_8bytes(1, &s);
    dim0 = h->sizeof_hdr == 540 ? h->dim[0] : s;
    swapped = dim0;
  } else {
    int16_t d = static_cast<const nifti_1_header*>(raw)->dim[0];
    dim0 = d;
    nifti_swap_2bytes(1, &d);
    swapped = d;
  }
  std::free(raw);
  const auto ok = [](int64_t d) { return d >= 1 && d <= 7; };
  if (ok(dim0) || ok(swapped)) return "";
  return "dim[0] (the number of dimensions) is " + std::to_string(dim0) +
         "; it must be 1 to 7 (damaged header)";
}

}  // namespace

Volume read_nifti(const std::string& path) {
  quiet_nifti();
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail(path, ": no such file");
  if (std::filesystem::is_directory(path, ec)) fail(path, ": is a directory, not a NIfTI file");
  // Said before nifti_clib, whose failure to open reads as a bad header.
  if (::access(path.c_str(), R_OK) != 0)
    fail(path, ": cannot be read (", std::strerror(errno), "); check its permissions");
  {
    CapturedStderr quiet;
    const std::string problem = raw_header_problem(path);
    quiet.reason();
    if (!problem.empty()) fail(path, ": not a readable NIfTI-1/NIfTI-2 file: ", problem);
  }
  CapturedStderr nifti_says;
  NimPtr hdr(nifti_image_read(path.c_str(), 0));
  if (!hdr)
    fail(path, ": not a readable NIfTI-1/NIfTI-2 file (bad or missing header)",
         nifti_says.reason());
  nifti_says.reason();
  const nifti_image& h = *hdr;
  const int64_t ndim = h.dim[0];
  if (ndim < 1 || ndim > 7) fail(path, ": invalid number of dimensions ", ndim);
  const RawGeometry stored = raw_geometry(path, h.byteorder != nifti_short_order());
  if (!stored.ok) fail(path, ": the header could not be read a second time (file changed?)");
  for (int a = 1; a <= std::min<int64_t>(ndim, 3); ++a) {
    if (stored.dim[a] < 1)
      fail(path, ": dim[", a, "] is ", stored.dim[a], "; every grid dimension must be >= 1");
    if (!(std::fabs(stored.pixdim[a]) > 0.0) || !std::isfinite(stored.pixdim[a]))
      fail(path, ": voxel size pixdim[", a, "] is ", stored.pixdim[a],
           "; it must be a non-zero, finite number");
  }
  // nifti_clib multiplies the dims without checking: a NIfTI-2 header's int64
  // dims can wrap its voxel count to a small number (2 x 2 x (2^62 + 2) is 8)
  // and every later size with it. The stored dims, multiplied with checks,
  // must give the count it reports; a datum is at most 16 bytes.
  {
    std::array<int64_t, 7> d{};
    for (int a = 1; a <= ndim; ++a)
      d[static_cast<size_t>(a - 1)] = std::max<int64_t>(stored.dim[a], 1);
    const int64_t count = bounded_product(d.data(), static_cast<size_t>(ndim),
                                          std::numeric_limits<int64_t>::max() / 16);
    if (count < 0 || count != h.nvox) {
      std::string grid;
      for (int a = 1; a <= ndim; ++a) grid += (a > 1 ? "x" : "") + std::to_string(stored.dim[a]);
      fail(path, ": the header's grid ", grid,
           " has more voxels than any file can hold (damaged or forged header)");
    }
  }
  for (int d = 4; d <= ndim; ++d)
    if (h.dim[d] > 1)
      fail(path, ": is ", ndim, "D (dim[", d, "] = ", h.dim[d],
           "); a single 3D volume is needed (split the series first)");
  if (h.nx < 1 || h.ny < 1 || h.nz < 1) fail(path, ": empty grid ", h.nx, "x", h.ny, "x", h.nz);

  Volume v;
  v.nx = h.nx;
  v.ny = ndim >= 2 ? h.ny : 1;
  v.nz = ndim >= 3 ? h.nz : 1;
  const double mm = to_mm(h.xyz_units);
  for (int a = 0; a < 3; ++a) {
    // |pixdim| as stored: nifti_clib may have turned a negative one into 1.
    const double d = ndim > a ? std::fabs(stored.pixdim[a + 1]) : 1.0;
    if (!(d > 0.0) || !std::isfinite(d))
      fail(path, ": voxel size along axis ", a, " is ", h.pixdim[a + 1], "; it must be positive");
    v.voxel_mm[static_cast<size_t>(a)] = d * mm;
  }
  v.qform_code = h.qform_code;
  v.sform_code = h.sform_code;
  v.qform = flat(h.qto_xyz);
  v.sform = flat(h.sto_xyz);
  v.datatype = h.datatype;

  switch (h.datatype) {
    case NIFTI_TYPE_UINT8:
    case NIFTI_TYPE_INT8:
    case NIFTI_TYPE_INT16:
    case NIFTI_TYPE_UINT16:
    case NIFTI_TYPE_INT32:
    case NIFTI_TYPE_UINT32:
    case NIFTI_TYPE_INT64:
    case NIFTI_TYPE_UINT64:
    case NIFTI_TYPE_FLOAT32:
    case NIFTI_TYPE_FLOAT64: break;
    default:
      fail(path, ": unsupported datatype ", nifti_datatype_string(h.datatype),
           " (real integer or floating-point voxels are needed)");
  }

  const int64_t n = v.numel();
  if (h.nvox != n) fail(path, ": header says ", h.nvox, " voxels, grid has ", n);
  const std::vector<unsigned char> raw = read_voxels(h, path);
  double slope = h.scl_slope, inter = h.scl_inter;
  // NIfTI: scl_slope = 0 (or not finite) means "no scaling".
  if (slope == 0.0 || !std::isfinite(slope) || !std::isfinite(inter)) {
    slope = 1.0;
    inter = 0.0;
  }
  v.data.resize(static_cast<size_t>(n));
  const void* src = raw.data();
  switch (h.datatype) {
    case NIFTI_TYPE_UINT8: convert<uint8_t>(src, n, slope, inter, v.data.data()); break;
    case NIFTI_TYPE_INT8: convert<int8_t>(src, n, slope, inter, v.data.data()); break;
    case NIFTI_TYPE_INT16: convert<int16_t>(src, n, slope, inter, v.data.data()); break;
    case NIFTI_TYPE_UINT16: convert<uint16_t>(src, n, slope, inter, v.data.data()); break;
    case NIFTI_TYPE_INT32: convert<int32_t>(src, n, slope, inter, v.data.data()); break;
    case NIFTI_TYPE_UINT32: convert<uint32_t>(src, n, slope, inter, v.data.data()); break;
    case NIFTI_TYPE_INT64: convert<int64_t>(src, n, slope, inter, v.data.data()); break;
    case NIFTI_TYPE_UINT64: convert<uint64_t>(src, n, slope, inter, v.data.data()); break;
    case NIFTI_TYPE_FLOAT32: convert<float>(src, n, slope, inter, v.data.data()); break;
    default: convert<double>(src, n, slope, inter, v.data.data()); break;
  }

  // Keep the header only; the voxels now live in v.data.
  auto keep = std::make_shared<NiftiHeader>();
  keep->nim = hdr.release();
  v.header = std::move(keep);
  return v;
}

void write_nifti(const std::string& path, const Volume& like, const float* data) {
  quiet_nifti();
  if (!like.header || !like.header->nim) {
    write_nifti_new(path, data, like.nx, like.ny, like.nz, like.voxel_mm);
    return;
  }
  output_extension(path);
  NimPtr nim(nifti_copy_nim_info(like.header->nim));
  if (!nim) fail(path, ": could not copy the NIfTI header");
  if (nim->nx != like.nx || nim->ny != like.ny || nim->nz != like.nz)
    fail(path, ": volume grid ", like.nx, "x", like.ny, "x", like.nz,
         " does not match the header it is written with");
  nim->datatype = NIFTI_TYPE_FLOAT32;
  nim->nbyper = 4;
  nim->swapsize = 4;
  nim->scl_slope = 1.0;
  nim->scl_inter = 0.0;
  nim->cal_min = nim->cal_max = 0.0;
  write_data_via_temp(nim.get(), data, path);
}

std::string field_grid_warning(const Volume& v, const std::string& path) {
  const int flat = (v.nx == 1) + (v.ny == 1) + (v.nz == 1);
  const std::string grid =
      std::to_string(v.nx) + "x" + std::to_string(v.ny) + "x" + std::to_string(v.nz);
  if (flat >= 2)
    fail(path, ": the grid is ", grid,
         "; a field map must be a 3-D volume (the dipole field spreads in all three axes)");
  if (flat == 1)
    return path + " is a 2-D image (" + grid +
           "): read as a 3-D volume one voxel thick; the dipole inversion needs the field's "
           "neighbours in all three axes, so expect a poor map";
  return "";
}

std::string voxel_size_mismatch(const Volume& a, const std::string& a_what, const Volume& b,
                                const std::string& b_what) {
  bool same = true;
  for (size_t i = 0; i < 3; ++i)
    same = same && std::fabs(a.voxel_mm[i] - b.voxel_mm[i]) <= 0.01 * a.voxel_mm[i];
  if (same) {
    // The same voxels, but placed elsewhere (shifted, flipped): the files
    // are still used voxel by voxel, as stored, which is right only when
    // one of them has a wrong header. Compared where both have an affine
    // (the sform when set, else the qform), to 0.01 mm.
    const auto affine = [](const Volume& v) -> const std::array<double, 16>* {
      if (v.sform_code > 0) return &v.sform;
      if (v.qform_code > 0) return &v.qform;
      return nullptr;
    };
    const auto* fa = affine(a);
    const auto* fb = affine(b);
    if (!fa || !fb) return "";
    double flip = 0, shift = 0;
    for (size_t r = 0; r < 3; ++r) {
      for (size_t c = 0; c < 3; ++c)
        flip = std::max(flip, std::fabs((*fa)[r * 4 + c] - (*fb)[r * 4 + c]));
      shift = std::max(shift, std::fabs((*fa)[r * 4 + 3] - (*fb)[r * 4 + 3]));
    }
    if (flip <= 0.01 && shift <= 0.01) return "";
    char buf[320];
    std::snprintf(buf, sizeof buf,
                  "%s is placed differently from %s (affines differ: axes by up to %g, origin by "
                  "up to %g mm); they are used voxel by voxel as stored, so check that this is "
                  "the right file",
                  b_what.c_str(), a_what.c_str(), flip, shift);
    return buf;
  }
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "%s has %g x %g x %g mm voxels, %s %g x %g x %g mm: is it on the same grid?",
                b_what.c_str(), b.voxel_mm[0], b.voxel_mm[1], b.voxel_mm[2], a_what.c_str(),
                a.voxel_mm[0], a.voxel_mm[1], a.voxel_mm[2]);
  return buf;
}

void check_output_file(const std::string& path, const std::string& what,
                       const std::vector<std::string>& others) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (path.empty()) fail(what, ": an output file name is needed");
  const fs::path p(path);
  if (fs::is_directory(p, ec)) fail(what, " ", path, ": is a directory; give a file name");
  check_replaceable(path);
  const fs::path folder = p.has_parent_path() ? p.parent_path() : fs::path(".");
  if (!fs::is_directory(folder, ec))
    fail(what, " ", path, ": the folder ", folder.string(), " does not exist");
  if (::access(folder.c_str(), W_OK) != 0)
    fail(what, " ", path, ": the folder ", folder.string(), " is not writable");
  for (const std::string& o : others) {
    if (o.empty()) continue;
    // The same name, or two names of one existing file (links, ./x and x).
    const bool same =
        fs::exists(p, ec) && fs::exists(o, ec)
            ? fs::equivalent(p, o, ec)
            : fs::absolute(p, ec).lexically_normal() == fs::absolute(o, ec).lexically_normal();
    if (same)
      fail(what, " ", path, ": the same file as ", o, ", which this command also reads or writes");
  }
}

void check_nifti_output(const std::string& path, const std::string& what,
                        const std::vector<std::string>& others) {
  if (!path.empty()) output_extension(path);
  check_output_file(path, what, others);
}

void write_nifti_new(const std::string& path, const float* data, int64_t nx, int64_t ny, int64_t nz,
                     const Vec3& voxel_mm) {
  quiet_nifti();
  output_extension(path);
  if (nx < 1 || ny < 1 || nz < 1) fail(path, ": cannot write an empty grid");
  int64_t dims[8] = {3, nx, ny, nz, 1, 1, 1, 1};
  NimPtr nim(nifti_make_new_nim(dims, NIFTI_TYPE_FLOAT32, 0));
  if (!nim) fail(path, ": could not make a NIfTI header");
  for (int a = 0; a < 3; ++a) nim->pixdim[a + 1] = voxel_mm[static_cast<size_t>(a)];
  nim->dx = voxel_mm[0];
  nim->dy = voxel_mm[1];
  nim->dz = voxel_mm[2];
  nim->xyz_units = NIFTI_UNITS_MM;
  // Axis-aligned, scaled by the voxel size, with the grid centre at (0, 0, 0) mm.
  const double off[3] = {-0.5 * static_cast<double>(nx - 1) * voxel_mm[0],
                         -0.5 * static_cast<double>(ny - 1) * voxel_mm[1],
                         -0.5 * static_cast<double>(nz - 1) * voxel_mm[2]};
  nim->qform_code = NIFTI_XFORM_SCANNER_ANAT;
  nim->sform_code = NIFTI_XFORM_SCANNER_ANAT;
  nim->quatern_b = nim->quatern_c = nim->quatern_d = 0.0;
  nim->qoffset_x = off[0];
  nim->qoffset_y = off[1];
  nim->qoffset_z = off[2];
  nim->qfac = 1.0;
  nim->qto_xyz = nifti_quatern_to_dmat44(0, 0, 0, off[0], off[1], off[2], voxel_mm[0], voxel_mm[1],
                                         voxel_mm[2], 1.0);
  nim->sto_xyz = nim->qto_xyz;
  write_data_via_temp(nim.get(), data, path);
}

}  // namespace dq
