// NIfTI I/O: header and affine round trips, datatype conversion with
// scl_slope/scl_inter, .nii and .nii.gz, and one-line errors for bad files.
#include <nifti2_io.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/error.h"
#include "core/io/nifti_io.h"
#include "tests/test_util.h"

namespace {

using namespace dq::test;

namespace fs = std::filesystem;
using Catch::Matchers::Contains;

// An int16 volume with scaling and an oblique qform plus a different sform,
// written by nifti_clib itself so our reader is checked against the library.
void write_int16_oblique(const std::string& path, int64_t nx, int64_t ny, int64_t nz) {
  int64_t dims[8] = {3, nx, ny, nz, 1, 1, 1, 1};
  nifti_image* nim = nifti_make_new_nim(dims, NIFTI_TYPE_INT16, 1);
  REQUIRE(nim != nullptr);
  auto* d = static_cast<int16_t*>(nim->data);
  for (int64_t i = 0; i < nim->nvox; ++i) d[i] = static_cast<int16_t>((i * 37) % 2001 - 1000);
  nim->scl_slope = 0.5;
  nim->scl_inter = -2.0;
  nim->pixdim[1] = nim->dx = 0.9;
  nim->pixdim[2] = nim->dy = 1.1;
  nim->pixdim[3] = nim->dz = 2.0;
  nim->xyz_units = NIFTI_UNITS_MM;
  nim->qform_code = NIFTI_XFORM_SCANNER_ANAT;
  // A rotation of about 23 degrees about x: quaternion (b, c, d) = (sin 11.5 deg, 0, 0).
  nim->quatern_b = std::sin(11.5 * M_PI / 180.0);
  nim->quatern_c = nim->quatern_d = 0.0;
  nim->qoffset_x = -40.5;
  nim->qoffset_y = 12.25;
  nim->qoffset_z = -7.0;
  nim->qfac = -1.0;
  nim->qto_xyz = nifti_quatern_to_dmat44(nim->quatern_b, 0, 0, nim->qoffset_x, nim->qoffset_y,
                                         nim->qoffset_z, 0.9, 1.1, 2.0, -1.0);
  nim->sform_code = NIFTI_XFORM_MNI_152;
  nim->sto_xyz = nim->qto_xyz;
  nim->sto_xyz.m[0][3] = 3.5;
  nim->sto_xyz.m[1][0] = 0.05;
  REQUIRE(nifti_set_filenames(nim, path.c_str(), 0, 1) == 0);
  nim->nifti_type = NIFTI_FTYPE_NIFTI1_1;
  nifti_image_write(nim);
  nifti_image_free(nim);
}

void check_same_geometry(const dq::Volume& a, const dq::Volume& b) {
  CHECK(a.nx == b.nx);
  CHECK(a.ny == b.ny);
  CHECK(a.nz == b.nz);
  for (int i = 0; i < 3; ++i) CHECK(a.voxel_mm[i] == Approx(b.voxel_mm[i]).epsilon(1e-6));
  CHECK(a.qform_code == b.qform_code);
  CHECK(a.sform_code == b.sform_code);
  for (int i = 0; i < 16; ++i) {
    CHECK(a.qform[i] == Approx(b.qform[i]).margin(1e-5));
    CHECK(a.sform[i] == Approx(b.sform[i]).margin(1e-5));
  }
}

}  // namespace

TEST_CASE("int16 with scl_slope/scl_inter reads as scaled floats", "[nifti]") {
  TempDir dir("deepqsm-nifti");
  for (const std::string ext : {".nii", ".nii.gz"}) {
    const std::string in = dir.file("in16" + ext);
    write_int16_oblique(in, 7, 5, 3);
    const dq::Volume v = dq::read_nifti(in);
    REQUIRE(v.nx == 7);
    REQUIRE(v.ny == 5);
    REQUIRE(v.nz == 3);
    CHECK(v.datatype == NIFTI_TYPE_INT16);
    CHECK(v.voxel_mm[0] == Approx(0.9));
    CHECK(v.voxel_mm[1] == Approx(1.1));
    CHECK(v.voxel_mm[2] == Approx(2.0));
    CHECK(v.qform_code == NIFTI_XFORM_SCANNER_ANAT);
    CHECK(v.sform_code == NIFTI_XFORM_MNI_152);
    CHECK(v.sform[3] == Approx(3.5));
    CHECK(v.sform[4] == Approx(0.05));
    for (int64_t i = 0; i < v.numel(); ++i) {
      const double raw = static_cast<double>((i * 37) % 2001 - 1000);
      CHECK(v.data[static_cast<size_t>(i)] == Approx(raw * 0.5 - 2.0));
    }
  }
}

TEST_CASE("write_nifti keeps the input's header and affine", "[nifti]") {
  TempDir dir("deepqsm-nifti");
  const std::string in = dir.file("in16.nii.gz");
  write_int16_oblique(in, 9, 4, 6);
  const dq::Volume v = dq::read_nifti(in);
  std::vector<float> data(v.data.size());
  for (size_t i = 0; i < data.size(); ++i) data[i] = 0.001f * static_cast<float>(i) - 0.1f;
  for (const std::string ext : {".nii", ".nii.gz"}) {
    const std::string out = dir.file("out" + ext);
    dq::write_nifti(out, v, data.data());
    const dq::Volume w = dq::read_nifti(out);
    check_same_geometry(v, w);
    CHECK(w.datatype == NIFTI_TYPE_FLOAT32);
    REQUIRE(w.data.size() == data.size());
    for (size_t i = 0; i < data.size(); ++i) CHECK(w.data[i] == data[i]);  // float32 is exact
    // Nothing is left behind but the result.
    for (const auto& e : fs::directory_iterator(dir.path))
      CHECK(e.path().filename().string().find(".tmp") == std::string::npos);
  }
}

TEST_CASE("write_nifti_new writes a centred axis-aligned affine", "[nifti]") {
  TempDir dir("deepqsm-nifti");
  const int64_t nx = 5, ny = 6, nz = 7;
  std::vector<float> data(static_cast<size_t>(nx * ny * nz));
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<float>(i);
  const std::string out = dir.file("new.nii.gz");
  dq::write_nifti_new(out, data.data(), nx, ny, nz, {1.5, 2.0, 0.5});
  const dq::Volume v = dq::read_nifti(out);
  CHECK(v.nx == nx);
  CHECK(v.ny == ny);
  CHECK(v.nz == nz);
  CHECK(v.voxel_mm[0] == Approx(1.5));
  CHECK(v.voxel_mm[1] == Approx(2.0));
  CHECK(v.voxel_mm[2] == Approx(0.5));
  CHECK(v.qform_code == NIFTI_XFORM_SCANNER_ANAT);
  CHECK(v.sform_code == NIFTI_XFORM_SCANNER_ANAT);
  CHECK(v.qform[0] == Approx(1.5));
  CHECK(v.qform[3] == Approx(-3.0));   // -(nx - 1) / 2 * 1.5
  CHECK(v.sform[11] == Approx(-1.5));  // -(nz - 1) / 2 * 0.5
  CHECK(v.data == data);
}

TEST_CASE("bad NIfTI files fail with one line naming the file", "[nifti]") {
  TempDir dir("deepqsm-nifti");
  auto message = [](const std::string& path) {
    try {
      dq::read_nifti(path);
    } catch (const dq::Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  SECTION("missing") {
    const std::string p = dir.file("missing.nii.gz");
    CHECK_THAT(message(p), Contains(p) && Contains("no such file"));
  }
  SECTION("not NIfTI") {
    const std::string p = dir.file("text.nii");
    std::ofstream(p) << "this is not a NIfTI file, just some text that is long enough to be a "
                        "header if one squints: "
                     << std::string(400, 'x');
    CHECK_THAT(message(p), Contains(p) && Contains("not a readable NIfTI"));
  }
  SECTION("truncated") {
    const std::string p = dir.file("trunc.nii");
    std::vector<float> data(32 * 32 * 32, 1.0f);
    dq::write_nifti_new(p, data.data(), 32, 32, 32, {1, 1, 1});
    fs::resize_file(p, fs::file_size(p) / 2);
    CHECK_THAT(message(p), Contains(p) && Contains("truncated"));
  }
  SECTION("4D") {
    const std::string p = dir.file("4d.nii.gz");
    int64_t dims[8] = {4, 4, 4, 4, 3, 1, 1, 1};
    nifti_image* nim = nifti_make_new_nim(dims, NIFTI_TYPE_FLOAT32, 1);
    REQUIRE(nifti_set_filenames(nim, p.c_str(), 0, 1) == 0);
    nifti_image_write(nim);
    nifti_image_free(nim);
    CHECK_THAT(message(p), Contains(p) && Contains("4D"));
  }
  SECTION("output name without a NIfTI extension") {
    std::vector<float> data(8, 0.0f);
    CHECK_THROWS_WITH(dq::write_nifti_new(dir.file("x.img"), data.data(), 2, 2, 2, {1, 1, 1}),
                      Contains(".nii or .nii.gz"));
  }
}

TEST_CASE("a big-endian file reads with its voxel sizes and values", "[nifti]") {
  // Written byte by byte: nifti_clib writes this CPU's order only. The stored
  // header is checked (pixdim 0 or NaN is refused), so it must be swapped too.
  TempDir dir("deepqsm-nifti");
  const std::string path = dir.file("be.nii");
  std::vector<unsigned char> bytes(352, 0);
  auto put = [&](size_t at, const void* v, size_t n) {  // big-endian from little-endian
    const auto* p = static_cast<const unsigned char*>(v);
    for (size_t i = 0; i < n; ++i) bytes[at + i] = p[n - 1 - i];
  };
  const int32_t sizeof_hdr = 348;
  put(0, &sizeof_hdr, 4);
  const int16_t dim[8] = {3, 4, 3, 2, 1, 1, 1, 1};
  for (int i = 0; i < 8; ++i) put(40 + 2 * static_cast<size_t>(i), &dim[i], 2);
  const int16_t datatype = NIFTI_TYPE_FLOAT32, bitpix = 32;
  put(70, &datatype, 2);
  put(72, &bitpix, 2);
  const float pixdim[8] = {1.0f, 1.5f, 1.25f, 2.0f, 0, 0, 0, 0};
  for (int i = 0; i < 8; ++i) put(76 + 4 * static_cast<size_t>(i), &pixdim[i], 4);
  const float vox_offset = 352.0f;
  put(108, &vox_offset, 4);
  const char magic[4] = {'n', '+', '1', '\0'};
  std::copy(magic, magic + 4, bytes.begin() + 344);
  for (int i = 0; i < 24; ++i) {
    const float v = 0.01f * static_cast<float>(i - 12);
    bytes.resize(bytes.size() + 4);
    put(bytes.size() - 4, &v, 4);
  }
  std::ofstream(path, std::ios::binary)
      .write(reinterpret_cast<const char*>(bytes.data()),
             static_cast<std::streamsize>(bytes.size()));

  const dq::Volume v = dq::read_nifti(path);
  CHECK(v.nx == 4);
  CHECK(v.ny == 3);
  CHECK(v.nz == 2);
  CHECK(v.voxel_mm[0] == 1.5);
  CHECK(v.voxel_mm[1] == 1.25);
  CHECK(v.voxel_mm[2] == 2.0);
  REQUIRE(v.data.size() == 24);
  for (int i = 0; i < 24; ++i)
    CHECK(v.data[static_cast<size_t>(i)] == 0.01f * static_cast<float>(i - 12));
}
