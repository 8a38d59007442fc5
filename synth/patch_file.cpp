#include "synth/patch_file.h"

#include <hdf5.h>

#include <algorithm>
#include <cstdio>
#include <vector>

#include "core/error.h"
#include "synth/recipe_json.h"

namespace dq {

namespace {

void check_h5(bool ok, const std::string& path, const char* what) {
  if (!ok) fail(path, ": HDF5 could not ", what);
}

hid_t create_dataset(hid_t file, const char* name, hid_t type, const std::vector<hsize_t>& dims,
                     const std::vector<hsize_t>& chunk, const std::string& path) {
  const hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t plist = H5Pcreate(H5P_DATASET_CREATE);
  bool ok = space >= 0 && plist >= 0;
  // Chunking by patch lets readers (and this writer) touch one patch at a time.
  if (ok && dims[0] > 0)
    ok = H5Pset_chunk(plist, static_cast<int>(chunk.size()), chunk.data()) >= 0;
  const hid_t d = ok ? H5Dcreate2(file, name, type, space, H5P_DEFAULT, plist, H5P_DEFAULT) : -1;
  if (plist >= 0) H5Pclose(plist);
  if (space >= 0) H5Sclose(space);
  check_h5(d >= 0, path, (std::string("create dataset ") + name).c_str());
  return d;
}

// Writes rows [first, first + count) of a dataset whose rows are `row` elements.
void write_rows(hid_t d, hid_t type, int rank, const std::vector<hsize_t>& dims, hsize_t first,
                hsize_t count, const void* data, const std::string& path) {
  std::vector<hsize_t> start(static_cast<size_t>(rank), 0), size = dims;
  start[0] = first;
  size[0] = count;
  const hid_t file_space = H5Dget_space(d);
  const hid_t mem_space = H5Screate_simple(rank, size.data(), nullptr);
  bool ok = file_space >= 0 && mem_space >= 0 &&
            H5Sselect_hyperslab(file_space, H5S_SELECT_SET, start.data(), nullptr, size.data(),
                                nullptr) >= 0 &&
            H5Dwrite(d, type, mem_space, file_space, H5P_DEFAULT, data) >= 0;
  if (mem_space >= 0) H5Sclose(mem_space);
  if (file_space >= 0) H5Sclose(file_space);
  check_h5(ok, path, "write patches (disk full?)");
}

void attr(hid_t obj, const char* name, hid_t type, const std::vector<hsize_t>& dims,
          const void* value, const std::string& path) {
  const hid_t space = dims.empty()
                          ? H5Screate(H5S_SCALAR)
                          : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  const hid_t a = space >= 0 ? H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT) : -1;
  const bool ok = a >= 0 && H5Awrite(a, type, value) >= 0;
  if (a >= 0) H5Aclose(a);
  if (space >= 0) H5Sclose(space);
  check_h5(ok, path, (std::string("write attribute ") + name).c_str());
}

void string_attr(hid_t obj, const char* name, const std::string& value, const std::string& path) {
  const hid_t type = H5Tcopy(H5T_C_S1);
  const bool ok = type >= 0 && H5Tset_size(type, value.empty() ? 1 : value.size()) >= 0;
  check_h5(ok, path, "make a string type");
  try {
    attr(obj, name, type, {}, value.c_str(), path);
  } catch (...) {
    H5Tclose(type);
    throw;
  }
  H5Tclose(type);
}

}  // namespace

struct PatchFileWriter::Ids {
  hid_t file = -1, field = -1, chi = -1, volume = -1, corner = -1, b0 = -1;
  ~Ids() {
    for (hid_t d : {field, chi, volume, corner, b0})
      if (d >= 0) H5Dclose(d);
    if (file >= 0) H5Fclose(file);
  }
};

PatchFileWriter::PatchFileWriter(const std::string& path, const Recipe& r, uint64_t seed,
                                 int64_t volumes)
    : path_(path), out_(path), r_(r), volumes_(volumes) {
  r.validate();
  if (volumes < 0) fail(path, ": negative volume count ", volumes);
  H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);  // errors come back as dq::Error, not stack dumps
  ids_ = new Ids;
  try {
    ids_->file = H5Fcreate(out_.tmp().c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (ids_->file < 0)
      fail("cannot create ", out_.tmp(), " (does the directory exist and is it writable?)");
    const hsize_t N = static_cast<hsize_t>(volumes * r.patches_per_volume),
                  P = static_cast<hsize_t>(r.patch_size);
    ids_->field =
        create_dataset(ids_->file, "field", H5T_NATIVE_FLOAT, {N, P, P, P}, {1, P, P, P}, path);
    ids_->chi =
        create_dataset(ids_->file, "chi", H5T_NATIVE_FLOAT, {N, P, P, P}, {1, P, P, P}, path);
    const hsize_t rows = static_cast<hsize_t>(std::max<int>(1, r.patches_per_volume));
    ids_->volume = create_dataset(ids_->file, "volume", H5T_NATIVE_INT64, {N}, {rows}, path);
    ids_->corner = create_dataset(ids_->file, "corner", H5T_NATIVE_INT64, {N, 3}, {rows, 3}, path);
    ids_->b0 = create_dataset(ids_->file, "b0_dir", H5T_NATIVE_DOUBLE, {N, 3}, {rows, 3}, path);
    const hid_t root = ids_->file;
    string_attr(root, "recipe", recipe_to_json(r).dump(), path);
    attr(root, "voxel_mm", H5T_NATIVE_DOUBLE, {3}, r.voxel_mm.data(), path);
    attr(root, "b0_dir", H5T_NATIVE_DOUBLE, {3}, r.b0_dir.data(), path);
    attr(root, "seed", H5T_NATIVE_UINT64, {}, &seed, path);
    const int64_t ints[3] = {r.volume_size, r.patch_size, r.patches_per_volume};
    attr(root, "volume_size", H5T_NATIVE_INT64, {}, &ints[0], path);
    attr(root, "patch_size", H5T_NATIVE_INT64, {}, &ints[1], path);
    attr(root, "patches_per_volume", H5T_NATIVE_INT64, {}, &ints[2], path);
    string_attr(root, "units", "ppm", path);
  } catch (...) {
    delete ids_;
    ids_ = nullptr;
    throw;
  }
}

PatchFileWriter::~PatchFileWriter() {
  delete ids_;
}

void PatchFileWriter::write_volume(int64_t volume, const float* field, const float* chi,
                                   const std::array<int64_t, 3>* corners,
                                   const std::array<double, 3>& b0) {
  DQ_CHECK(ids_ && written_ < volumes_, "write_volume beyond the ", volumes_, " volumes declared");
  const hsize_t per = static_cast<hsize_t>(r_.patches_per_volume),
                P = static_cast<hsize_t>(r_.patch_size),
                first = static_cast<hsize_t>(written_) * per;
  write_rows(ids_->field, H5T_NATIVE_FLOAT, 4, {0, P, P, P}, first, per, field, path_);
  write_rows(ids_->chi, H5T_NATIVE_FLOAT, 4, {0, P, P, P}, first, per, chi, path_);
  std::vector<int64_t> vol(per, volume), corner(3 * per);
  std::vector<double> dirs(3 * per);
  for (hsize_t p = 0; p < per; ++p)
    for (size_t a = 0; a < 3; ++a) {
      corner[3 * p + a] = corners[p][a];
      dirs[3 * p + a] = b0[a];
    }
  write_rows(ids_->volume, H5T_NATIVE_INT64, 1, {0}, first, per, vol.data(), path_);
  write_rows(ids_->corner, H5T_NATIVE_INT64, 2, {0, 3}, first, per, corner.data(), path_);
  write_rows(ids_->b0, H5T_NATIVE_DOUBLE, 2, {0, 3}, first, per, dirs.data(), path_);
  ++written_;
}

void PatchFileWriter::close() {
  DQ_CHECK(ids_, "close() twice");
  if (written_ != volumes_) fail(path_, ": only ", written_, " of ", volumes_, " volumes written");
  // Closing writes what HDF5 still caches, so its status is checked too.
  bool ok = true;
  for (hid_t* d : {&ids_->field, &ids_->chi, &ids_->volume, &ids_->corner, &ids_->b0}) {
    ok = H5Dclose(*d) >= 0 && ok;
    *d = -1;
  }
  ok = H5Fclose(ids_->file) >= 0 && ok;
  ids_->file = -1;
  delete ids_;
  ids_ = nullptr;
  check_h5(ok, path_, "finish the file (disk full?)");
  out_.finish();
}

}  // namespace dq
