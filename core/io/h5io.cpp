#include "core/io/h5io.h"

#include <hdf5.h>

#include <algorithm>
#include <filesystem>
#include <limits>
#include <sstream>

#include "core/dims.h"
#include "core/error.h"

namespace dq {

namespace {

// HDF5 1.10 closes whatever is still open from an atexit handler. After a
// write failed for a full disk, the failed H5Fclose leaves the file open and
// that handler crashes flushing it (SIGSEGV in H5F__close_cb, after our
// one-line error). Every file is closed explicitly (H5File, PatchWriter), so
// the handler has nothing to do; it must be switched off before any other
// HDF5 call, hence at static initialisation.
[[maybe_unused]] const bool kNoHdf5Atexit = H5dont_atexit() >= 0;

static_assert(sizeof(hid_t) == sizeof(int64_t), "hid_t is kept in an int64_t");

// One HDF5 identifier, closed with the matching H5?close when it goes away.
class Handle {
 public:
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Handle() {
    if (id_ >= 0) close_(id_);
  }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }

 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

// HDF5 would otherwise print its error stack on every failed call, including
// the probes (H5Lexists, H5Fis_accessible) that fail by design.
void silence_hdf5() {
  static const bool done = [] {
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
    return true;
  }();
  (void)done;
}

const char* class_name(H5T_class_t c) {
  switch (c) {
    case H5T_INTEGER: return "integer";
    case H5T_FLOAT: return "float";
    case H5T_STRING: return "string";
    case H5T_COMPOUND: return "compound";
    default: return "non-numeric";
  }
}

// Every prefix of "a/b/c" must exist as a link: H5Lexists fails (rather than
// answering false) when an intermediate group is missing.
bool link_exists(hid_t file, const std::string& name) {
  if (name.empty() || name == "/") return true;
  size_t pos = 0;
  while (true) {
    size_t next = name.find('/', pos);
    std::string prefix = name.substr(0, next);
    if (!prefix.empty() && prefix != "/" && H5Lexists(file, prefix.c_str(), H5P_DEFAULT) <= 0)
      return false;
    if (next == std::string::npos) return true;
    pos = next + 1;
  }
}

std::string obj_name(const std::string& obj) {
  return obj.empty() ? "/" : obj;
}

std::string dims_str(const std::vector<int64_t>& dims) {
  std::ostringstream os;
  os << "(";
  for (size_t i = 0; i < dims.size(); ++i) os << (i ? ", " : "") << dims[i];
  os << ")";
  return os.str();
}

}  // namespace

int64_t checked_dataset_elements(const std::string& path, const std::string& name,
                                 const std::vector<int64_t>& dims, int64_t elem_bytes,
                                 int64_t file_bytes) {
  const int64_t most =
      std::max<int64_t>(file_bytes, 0) * kMaxH5Expansion / std::max<int64_t>(elem_bytes, 1);
  const int64_t n = bounded_product(dims.data(), dims.size(), most);
  if (n < 0)
    fail(path, ": dataset '", name, "' has shape ", dims_str(dims), ", more than a file of ",
         file_bytes, " bytes can hold (damaged file)");
  return n;
}

H5File::H5File(const std::string& path, Mode mode) : path_(path) {
  silence_hdf5();
  if (mode == Mode::truncate) {
    id_ = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    if (id_ < 0) fail(path, ": cannot create HDF5 file (check the folder exists and is writable)");
    return;
  }
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) fail(path, ": no such file");
  if (!std::filesystem::is_regular_file(path, ec)) fail(path, ": not a regular file");
    // > 0 HDF5 signature found, 0 not HDF5, < 0 unreadable. H5Fis_hdf5 became
    // H5Fis_accessible in HDF5 1.12 (Debian 12 ships 1.10).
#if H5_VERSION_GE(1, 12, 0)
  htri_t accessible = H5Fis_accessible(path.c_str(), H5P_DEFAULT);
#else
  htri_t accessible = H5Fis_hdf5(path.c_str());
#endif
  if (accessible == 0) fail(path, ": not an HDF5 file");
  if (accessible < 0) fail(path, ": cannot read file");
  id_ = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  if (id_ < 0) fail(path, ": cannot open HDF5 file (truncated or corrupt?)");
}

H5File::~H5File() {
  if (id_ >= 0) H5Fclose(id_);
}

bool H5File::exists(const std::string& name) const {
  if (link_exists(id_, name)) return true;
  // Not an object: maybe an attribute, "obj/key" (or "key" on the root).
  size_t slash = name.rfind('/');
  std::string obj = slash == std::string::npos ? "/" : name.substr(0, slash);
  std::string key = slash == std::string::npos ? name : name.substr(slash + 1);
  return has_attr(obj, key);
}

void H5File::create_group(const std::string& name) {
  if (link_exists(id_, name)) fail(path_, ": cannot create group '", name, "': it already exists");
  Handle g(H5Gcreate2(id_, name.c_str(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose);
  if (!g.ok()) fail(path_, ": cannot create group '", name, "' (does its parent exist?)");
}

namespace {

void write_dataset(hid_t file, const std::string& path, const std::string& name,
                   const std::vector<int64_t>& dims, hid_t mem_type, hid_t file_type,
                   const void* data) {
  std::vector<hsize_t> hd;
  for (int64_t d : dims) {
    if (d < 0) fail(path, ": dataset '", name, "' has negative dimension in ", dims_str(dims));
    hd.push_back(static_cast<hsize_t>(d));
  }
  Handle space(dims.empty() ? H5Screate(H5S_SCALAR)
                            : H5Screate_simple(static_cast<int>(hd.size()), hd.data(), nullptr),
               H5Sclose);
  if (!space.ok()) fail(path, ": cannot make dataspace ", dims_str(dims), " for '", name, "'");
  if (link_exists(file, name))
    fail(path, ": cannot create dataset '", name, "': it already exists");
  Handle ds(
      H5Dcreate2(file, name.c_str(), file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT),
      H5Dclose);
  if (!ds.ok()) fail(path, ": cannot create dataset '", name, "' (does its group exist?)");
  if (H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0)
    fail(path, ": cannot write dataset '", name, "'");
}

hid_t open_dataset(hid_t file, const std::string& path, const std::string& name) {
  if (!link_exists(file, name)) fail(path, ": no dataset '", name, "'");
  hid_t ds = H5Dopen2(file, name.c_str(), H5P_DEFAULT);
  if (ds < 0) fail(path, ": '", name, "' is not a dataset");
  return ds;
}

// Dims of an open dataset; empty for a scalar. A size past int64 (HDF5's
// are unsigned 64-bit) is refused here, before anything multiplies it.
std::vector<int64_t> dataset_dims(hid_t ds, const std::string& path, const std::string& name) {
  Handle space(H5Dget_space(ds), H5Sclose);
  int rank = H5Sget_simple_extent_ndims(space.get());
  if (rank < 0) fail(path, ": cannot read the shape of dataset '", name, "'");
  std::vector<hsize_t> hd(static_cast<size_t>(rank));
  if (rank > 0 && H5Sget_simple_extent_dims(space.get(), hd.data(), nullptr) < 0)
    fail(path, ": cannot read the shape of dataset '", name, "'");
  for (hsize_t d : hd)
    if (d > static_cast<hsize_t>(std::numeric_limits<int64_t>::max()))
      fail(path, ": dataset '", name, "' has a dimension of ", d,
           ", more than any file can hold (damaged file)");
  return std::vector<int64_t>(hd.begin(), hd.end());
}

// Reads dataset `name` after checking its type class. HDF5 converts within
// the class (float64 -> float32, int32 -> int64).
template <typename T>
std::vector<T> read_dataset(hid_t file, const std::string& path, const std::string& name,
                            H5T_class_t want, hid_t mem_type, std::vector<int64_t>* dims_out) {
  Handle ds(open_dataset(file, path, name), H5Dclose);
  Handle type(H5Dget_type(ds.get()), H5Tclose);
  H5T_class_t cls = H5Tget_class(type.get());
  if (cls != want)
    fail(path, ": dataset '", name, "' holds ", class_name(cls), " values, expected ",
         class_name(want));
  std::vector<int64_t> dims = dataset_dims(ds.get(), path, name);
  hsize_t file_bytes = 0;
  if (H5Fget_filesize(file, &file_bytes) < 0) fail(path, ": cannot read the file's size");
  const int64_t n =
      checked_dataset_elements(path, name, dims, sizeof(T), static_cast<int64_t>(file_bytes));
  std::vector<T> out(static_cast<size_t>(n));
  if (n > 0 && H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) < 0)
    fail(path, ": cannot read dataset '", name, "' (truncated or corrupt file?)");
  if (dims_out) *dims_out = dims;
  return out;
}

}  // namespace

void H5File::write_floats(const std::string& name, const std::vector<int64_t>& dims,
                          const float* data) {
  write_dataset(id_, path_, name, dims, H5T_NATIVE_FLOAT, H5T_IEEE_F32LE, data);
}

void H5File::write_int64s(const std::string& name, const std::vector<int64_t>& dims,
                          const int64_t* data) {
  write_dataset(id_, path_, name, dims, H5T_NATIVE_INT64, H5T_STD_I64LE, data);
}

std::vector<float> H5File::read_floats(const std::string& name, std::vector<int64_t>* dims) const {
  return read_dataset<float>(id_, path_, name, H5T_FLOAT, H5T_NATIVE_FLOAT, dims);
}

std::vector<int64_t> H5File::read_int64s(const std::string& name,
                                         std::vector<int64_t>* dims) const {
  return read_dataset<int64_t>(id_, path_, name, H5T_INTEGER, H5T_NATIVE_INT64, dims);
}

std::vector<int64_t> H5File::dims(const std::string& name) const {
  Handle ds(open_dataset(id_, path_, name), H5Dclose);
  return dataset_dims(ds.get(), path_, name);
}

// ------------------------------------------------------------------ attributes

namespace {

// Replaces attribute `key` on `obj` with a scalar of `type` holding *value.
void write_attr(hid_t file, const std::string& path, const std::string& obj, const std::string& key,
                hid_t type, const void* value) {
  std::string o = obj_name(obj);
  if (!link_exists(file, o)) fail(path, ": cannot set attribute '", key, "': no object '", o, "'");
  if (H5Aexists_by_name(file, o.c_str(), key.c_str(), H5P_DEFAULT) > 0 &&
      H5Adelete_by_name(file, o.c_str(), key.c_str(), H5P_DEFAULT) < 0)
    fail(path, ": cannot replace attribute '", key, "' on '", o, "'");
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle attr(H5Acreate_by_name(file, o.c_str(), key.c_str(), type, space.get(), H5P_DEFAULT,
                                H5P_DEFAULT, H5P_DEFAULT),
              H5Aclose);
  if (!attr.ok() || H5Awrite(attr.get(), type, value) < 0)
    fail(path, ": cannot write attribute '", key, "' on '", o, "'");
}

// Opens attribute `key` on `obj`; it must hold exactly one value.
hid_t open_attr(hid_t file, const std::string& path, const std::string& obj,
                const std::string& key) {
  std::string o = obj_name(obj);
  if (!link_exists(file, o) || H5Aexists_by_name(file, o.c_str(), key.c_str(), H5P_DEFAULT) <= 0)
    fail(path, ": no attribute '", key, "' on '", o, "'");
  hid_t a = H5Aopen_by_name(file, o.c_str(), key.c_str(), H5P_DEFAULT, H5P_DEFAULT);
  if (a < 0) fail(path, ": cannot open attribute '", key, "' on '", o, "'");
  Handle space(H5Aget_space(a), H5Sclose);
  if (H5Sget_simple_extent_npoints(space.get()) != 1) {
    H5Aclose(a);
    fail(path, ": attribute '", key, "' on '", o, "' is not a single value");
  }
  return a;
}

// H5Aread copies the type's stored size from the attribute's bytes without
// checking that a damaged file stored that many: fuzzing found a
// variable-length string whose 16-byte heap reference was stored in 15
// bytes, and H5A__read read past libhdf5's own buffer (AddressSanitizer:
// heap-buffer-overflow). So the stored size is checked first: the type's
// size, or for a variable-length string its heap reference (a 4-byte
// length, a file address, a 4-byte index).
void check_attr_storage(hid_t attr, hid_t type, const std::string& path, const std::string& obj,
                        const std::string& key) {
  size_t need = H5Tget_size(type);
  if (H5Tget_class(type) == H5T_VLEN ||
      (H5Tget_class(type) == H5T_STRING && H5Tis_variable_str(type) > 0)) {
    size_t sizeof_addr = 8, sizeof_size = 8;
    Handle file(H5Iget_file_id(attr), H5Fclose);
    Handle plist(H5Fget_create_plist(file.get()), H5Pclose);
    if (H5Pget_sizes(plist.get(), &sizeof_addr, &sizeof_size) < 0) sizeof_addr = 8;
    need = 4 + sizeof_addr + 4;
  }
  const hsize_t have = H5Aget_storage_size(attr);
  if (need == 0 || have < need)
    fail(path, ": attribute '", key, "' on '", obj_name(obj), "' is damaged (", have,
         " bytes stored where its type needs ", need, "); the file is corrupt");
}

// Reads a numeric attribute as mem_type; HDF5 converts within and between
// the integer and float classes.
template <typename T>
T read_numeric_attr(hid_t file, const std::string& path, const std::string& obj,
                    const std::string& key, hid_t mem_type, bool allow_float) {
  Handle attr(open_attr(file, path, obj, key), H5Aclose);
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  H5T_class_t cls = H5Tget_class(type.get());
  if (cls != H5T_INTEGER && !(allow_float && cls == H5T_FLOAT))
    fail(path, ": attribute '", key, "' on '", obj_name(obj), "' holds a ", class_name(cls),
         " value, expected ", allow_float ? "a number" : "an integer");
  check_attr_storage(attr.get(), type.get(), path, obj, key);
  T value{};
  if (H5Aread(attr.get(), mem_type, &value) < 0)
    fail(path, ": cannot read attribute '", key, "' on '", obj_name(obj), "'");
  return value;
}

}  // namespace

void H5File::set_attr(const std::string& obj, const std::string& key, const std::string& value) {
  // Variable-length UTF-8, as h5py writes Python strings.
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), H5T_VARIABLE);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  const char* p = value.c_str();
  write_attr(id_, path_, obj, key, type.get(), &p);
}

void H5File::set_attr(const std::string& obj, const std::string& key, int64_t value) {
  write_attr(id_, path_, obj, key, H5T_NATIVE_INT64, &value);
}

void H5File::set_attr(const std::string& obj, const std::string& key, double value) {
  write_attr(id_, path_, obj, key, H5T_NATIVE_DOUBLE, &value);
}

std::string H5File::attr_string(const std::string& obj, const std::string& key) const {
  Handle attr(open_attr(id_, path_, obj, key), H5Aclose);
  Handle type(H5Aget_type(attr.get()), H5Tclose);
  if (H5Tget_class(type.get()) != H5T_STRING)
    fail(path_, ": attribute '", key, "' on '", obj_name(obj), "' holds a ",
         class_name(H5Tget_class(type.get())), ", expected a string");
  check_attr_storage(attr.get(), type.get(), path_, obj, key);
  if (H5Tis_variable_str(type.get()) > 0) {
    char* s = nullptr;
    if (H5Aread(attr.get(), type.get(), &s) < 0)
      fail(path_, ": cannot read attribute '", key, "' on '", obj_name(obj), "'");
    std::string out = s ? s : "";
    H5free_memory(s);
    return out;
  }
  // Fixed length: read the stored bytes, drop the null or space padding.
  std::string out(H5Tget_size(type.get()), '\0');
  if (H5Aread(attr.get(), type.get(), out.data()) < 0)
    fail(path_, ": cannot read attribute '", key, "' on '", obj_name(obj), "'");
  size_t end = out.find('\0');
  if (end != std::string::npos) out.resize(end);
  if (H5Tget_strpad(type.get()) == H5T_STR_SPACEPAD) out.erase(out.find_last_not_of(' ') + 1);
  return out;
}

int64_t H5File::attr_int(const std::string& obj, const std::string& key) const {
  return read_numeric_attr<int64_t>(id_, path_, obj, key, H5T_NATIVE_INT64, false);
}

double H5File::attr_double(const std::string& obj, const std::string& key) const {
  return read_numeric_attr<double>(id_, path_, obj, key, H5T_NATIVE_DOUBLE, true);
}

bool H5File::has_attr(const std::string& obj, const std::string& key) const {
  std::string o = obj_name(obj);
  return link_exists(id_, o) && H5Aexists_by_name(id_, o.c_str(), key.c_str(), H5P_DEFAULT) > 0;
}

void H5File::flush() {
  if (H5Fflush(id_, H5F_SCOPE_GLOBAL) < 0) fail(path_, ": cannot flush HDF5 file");
}

void H5File::close() {
  if (id_ < 0) return;
  const herr_t rc = H5Fclose(id_);
  id_ = -1;
  if (rc < 0) fail(path_, ": HDF5 could not finish the file (disk full?)");
}

}  // namespace dq
