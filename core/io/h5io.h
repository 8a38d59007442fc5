// A small RAII layer over the HDF5 C API: what checkpoints, patch files and
// the reference tests need (float/int datasets of any rank, string and
// numeric attributes, groups). Errors come back as dq::Error naming the file
// and the object, never as HDF5's own stack dump.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dq {

// The number of elements of dataset `name` of file `path` (`file_bytes`
// long) with shape `dims`, each `elem_bytes` wide, checked before anything
// is allocated: no negative size, no product that overflows, and no more
// bytes than a file of that size can hold (kMaxH5Expansion times its size:
// our writers store data uncompressed or deflated, which expands at most
// 1032 times). Fails naming the file, the dataset and the shape.
constexpr int64_t kMaxH5Expansion = 1040;
int64_t checked_dataset_elements(const std::string& path, const std::string& name,
                                 const std::vector<int64_t>& dims, int64_t elem_bytes,
                                 int64_t file_bytes);

class H5File {
 public:
  enum class Mode { read, truncate };  // truncate creates or overwrites
  H5File(const std::string& path, Mode mode);
  ~H5File();
  H5File(const H5File&) = delete;
  H5File& operator=(const H5File&) = delete;

  const std::string& path() const { return path_; }
  bool exists(const std::string& name) const;  // dataset, group or attribute path "a/b"
  void create_group(const std::string& name);  // parents must exist

  // Datasets, row-major with the given dims. Names may contain '/' (groups
  // must exist). write_* creates the dataset; read_* checks the type.
  void write_floats(const std::string& name, const std::vector<int64_t>& dims, const float* data);
  void write_int64s(const std::string& name, const std::vector<int64_t>& dims, const int64_t* data);
  std::vector<float> read_floats(const std::string& name,
                                 std::vector<int64_t>* dims = nullptr) const;
  std::vector<int64_t> read_int64s(const std::string& name,
                                   std::vector<int64_t>* dims = nullptr) const;
  std::vector<int64_t> dims(const std::string& name) const;

  // Attributes on the root group ("/") or on a named object.
  void set_attr(const std::string& obj, const std::string& key, const std::string& value);
  void set_attr(const std::string& obj, const std::string& key, int64_t value);
  void set_attr(const std::string& obj, const std::string& key, double value);
  std::string attr_string(const std::string& obj, const std::string& key) const;
  int64_t attr_int(const std::string& obj, const std::string& key) const;
  double attr_double(const std::string& obj, const std::string& key) const;
  bool has_attr(const std::string& obj, const std::string& key) const;

  void flush();
  // Closes the file now, failing when HDF5 could not finish it (a full
  // disk); the destructor closes silently.
  void close();

 private:
  std::string path_;
  int64_t id_ = -1;  // hid_t, kept as int64 so this header needs no hdf5.h
};

}  // namespace dq
