#include "train/patch_source.h"

#include <hdf5.h>
#include <unistd.h>

#include <algorithm>
#include <limits>
#include <sstream>

#include "core/error.h"
#include "core/io/h5io.h"
#include "synth/stream.h"
#include "synth/synth.h"

namespace dq {

namespace {

class GeneratorSource final : public PatchSource {
 public:
  explicit GeneratorSource(const TrainConfig& cfg) : cfg_(cfg) {
    const int64_t P = cfg.data.patch_size;
    const double bytes = 2.0 * static_cast<double>(cfg.train_volumes) *
                         cfg.data.patches_per_volume * static_cast<double>(P * P * P) * 4.0;
    const double ram =
        static_cast<double>(sysconf(_SC_PHYS_PAGES)) * static_cast<double>(sysconf(_SC_PAGE_SIZE));
    if (ram > 0 && bytes > 0.75 * ram)
      fail("data: ", cfg.train_volumes, " training volumes x ", cfg.data.patches_per_volume,
           " patches of ", P, "^3 need ", bytes / 1e9, " GB in memory, more than 3/4 of the ",
           ram / 1e9,
           " GB here; stream fresh volumes (data.refresh_every) or train from a patch "
           "file (data.source \"hdf5\")");
  }
  bool prepare(int64_t step) override {
    const int64_t block = position(step);
    if (block == block_) return false;
    set_ = generate_patches(cfg_.data, cfg_.seed, block * cfg_.train_volumes, cfg_.train_volumes);
    block_ = block;
    return true;
  }
  int64_t size() const override { return set_.field.defined() ? set_.field.dim(0) : 0; }
  int64_t position(int64_t step) const override {
    return cfg_.refresh_every > 0 ? step / cfg_.refresh_every : 0;
  }
  void gather(const std::vector<int64_t>& idx, float* field, float* chi) override {
    const int64_t per = set_.field.numel() / set_.field.dim(0);
    for (size_t b = 0; b < idx.size(); ++b) {
      const int64_t off = static_cast<int64_t>(b) * per;
      std::copy(set_.field.f32() + idx[b] * per, set_.field.f32() + (idx[b] + 1) * per,
                field + off);
      std::copy(set_.chi.f32() + idx[b] * per, set_.chi.f32() + (idx[b] + 1) * per, chi + off);
    }
  }
  std::string describe() const override {
    std::ostringstream os;
    os << "synthetic, " << cfg_.train_volumes << " volumes x " << cfg_.data.patches_per_volume
       << " patches";
    if (cfg_.refresh_every > 0)
      os << ", fresh volumes every " << cfg_.refresh_every << " steps";
    else
      os << ", fixed set";
    return os.str();
  }

 private:
  const TrainConfig& cfg_;
  PatchSet set_;
  int64_t block_ = -1;
};

class StreamSource final : public PatchSource {
 public:
  explicit StreamSource(const TrainConfig& cfg) {
    sc_.recipe = cfg.data;
    sc_.seed = cfg.seed;
    sc_.batch = cfg.batch;
    sc_.train_volumes = cfg.train_volumes;
    sc_.device = cfg.device;
    sc_.validate();
  }
  // The stream starts at the first step asked for (a resumed run's step) and
  // then hands out consecutive batches; a step out of order restarts it.
  bool prepare(int64_t step) override {
    if (stream_ && batch_.step == step && batch_.field.defined()) return false;
    if (!stream_ || stream_->next_step() != step)
      stream_ = std::make_unique<PatchStream>(sc_, step);
    batch_ = stream_->next();
    return false;
  }
  int64_t size() const override { return sc_.batch; }
  int64_t position(int64_t step) const override { return step; }
  void gather(const std::vector<int64_t>& idx, float* field, float* chi) override {
    const int64_t per = batch_.field.numel() / batch_.field.dim(0);
    for (size_t b = 0; b < idx.size(); ++b) {
      const int64_t off = static_cast<int64_t>(b) * per;
      std::copy(batch_.field.f32() + idx[b] * per, batch_.field.f32() + (idx[b] + 1) * per,
                field + off);
      std::copy(batch_.chi.f32() + idx[b] * per, batch_.chi.f32() + (idx[b] + 1) * per, chi + off);
    }
  }
  std::string describe() const override {
    std::ostringstream os;
    os << "synthetic stream, " << sc_.group_volumes() << " volumes per pool, "
       << (sc_.train_volumes > 0 ? std::to_string(sc_.train_volumes) + " volumes cycled"
                                 : std::string("a fresh volume every time"));
    if (stream_) os << ", " << stream_->wait_seconds() << " s waited so far";
    return os.str();
  }
  bool deals_batches() const override { return true; }

 private:
  StreamConfig sc_;
  std::unique_ptr<PatchStream> stream_;
  Batch batch_;
};

// An HDF5 handle closed on scope exit.
struct H5Id {
  hid_t id = -1;
  void (*close)(hid_t) = nullptr;
  H5Id() = default;
  H5Id(hid_t i, void (*c)(hid_t)) : id(i), close(c) {}
  H5Id(H5Id&& o) noexcept : id(o.id), close(o.close) { o.id = -1; }
  H5Id& operator=(H5Id&& o) noexcept {
    std::swap(id, o.id);
    std::swap(close, o.close);
    return *this;
  }
  ~H5Id() {
    if (id >= 0 && close) close(id);
  }
};
void close_file(hid_t i) {
  H5Fclose(i);
}
void close_dataset(hid_t i) {
  H5Dclose(i);
}
void close_space(hid_t i) {
  H5Sclose(i);
}
void close_type(hid_t i) {
  H5Tclose(i);
}

class Hdf5Source final : public PatchSource {
 public:
  explicit Hdf5Source(const TrainConfig& cfg) : path_(cfg.patch_file), P_(cfg.data.patch_size) {
    // H5File checks existence and the HDF5 signature with readable messages;
    // then the raw API reads hyperslabs, which H5File does not offer.
    { H5File probe(path_, H5File::Mode::read); }
    file_ = H5Id(H5Fopen(path_.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), close_file);
    if (file_.id < 0) fail(path_, ": cannot open the patch file");
    field_ = open("field");
    chi_ = open("chi");
    if (n_field_ != n_chi_)
      fail(path_, ": data.patch_file has ", n_field_, " field patches but ", n_chi_,
           " chi patches");
    n_ = n_field_;
    if (n_ < 1) fail(path_, ": data.patch_file holds no patches");
  }
  bool prepare(int64_t) override { return false; }
  int64_t size() const override { return n_; }
  int64_t position(int64_t) const override { return 0; }
  void gather(const std::vector<int64_t>& idx, float* field, float* chi) override {
    const int64_t per = P_ * P_ * P_;
    for (size_t b = 0; b < idx.size(); ++b) {
      read_patch(field_, "field", idx[b], field + static_cast<int64_t>(b) * per);
      read_patch(chi_, "chi", idx[b], chi + static_cast<int64_t>(b) * per);
    }
  }
  std::string describe() const override {
    return "patch file " + path_ + ", " + std::to_string(n_) + " patches";
  }

 private:
  struct Dataset {
    H5Id ds;
    int rank = 0;
  };

  Dataset open(const char* name) {
    if (H5Lexists(file_.id, name, H5P_DEFAULT) <= 0)
      fail(path_, ": data.patch_file has no dataset '", name, "' (it needs 'field' and 'chi')");
    Dataset d;
    d.ds = H5Id(H5Dopen2(file_.id, name, H5P_DEFAULT), close_dataset);
    if (d.ds.id < 0) fail(path_, ": '", name, "' is not a dataset");
    H5Id type(H5Dget_type(d.ds.id), close_type);
    if (H5Tget_class(type.id) != H5T_FLOAT)
      fail(path_, ": dataset '", name, "' must hold floating-point values (ppm)");
    H5Id space(H5Dget_space(d.ds.id), close_space);
    d.rank = H5Sget_simple_extent_ndims(space.id);
    hsize_t dims[5] = {0, 0, 0, 0, 0};
    bool ok = d.rank == 4 || d.rank == 5;
    if (ok) H5Sget_simple_extent_dims(space.id, dims, nullptr);
    const hsize_t p = static_cast<hsize_t>(P_);
    ok = ok && dims[1] == p && dims[2] == p && dims[3] == p && (d.rank == 4 || dims[4] == 1);
    if (!ok) {
      std::ostringstream os;
      for (int i = 0; i < d.rank && i < 5; ++i) os << (i ? ", " : "") << dims[i];
      fail(path_, ": dataset '", name, "' has shape (", os.str(), "); data.patch_size ", P_,
           " needs (N, ", P_, ", ", P_, ", ", P_, ") or (N, ", P_, ", ", P_, ", ", P_, ", 1)");
    }
    // A forged N (up to 2^64 - 1) would pass as a negative or an endless
    // count: N x P^3 floats must fit the file (core/io/h5io.h).
    hsize_t file_bytes = 0;
    if (H5Fget_filesize(file_.id, &file_bytes) < 0) fail(path_, ": cannot read the file's size");
    if (dims[0] > static_cast<hsize_t>(std::numeric_limits<int64_t>::max()))
      fail(path_, ": dataset '", name, "' claims ", dims[0],
           " patches, more than any file can hold (damaged file)");
    const std::vector<int64_t> shape = {static_cast<int64_t>(dims[0]), P_, P_, P_};
    checked_dataset_elements(path_, name, shape, sizeof(float), static_cast<int64_t>(file_bytes));
    (name[0] == 'f' ? n_field_ : n_chi_) = static_cast<int64_t>(dims[0]);
    return d;
  }

  void read_patch(const Dataset& d, const char* name, int64_t i, float* out) {
    H5Id file_space(H5Dget_space(d.ds.id), close_space);
    const hsize_t p = static_cast<hsize_t>(P_);
    const hsize_t start[5] = {static_cast<hsize_t>(i), 0, 0, 0, 0};
    const hsize_t count[5] = {1, p, p, p, 1};
    const hsize_t mem_dims[1] = {p * p * p};
    H5Id mem_space(H5Screate_simple(1, mem_dims, nullptr), close_space);
    if (H5Sselect_hyperslab(file_space.id, H5S_SELECT_SET, start, nullptr, count, nullptr) < 0 ||
        H5Dread(d.ds.id, H5T_NATIVE_FLOAT, mem_space.id, file_space.id, H5P_DEFAULT, out) < 0)
      fail(path_, ": cannot read patch ", i, " of dataset '", name,
           "' (truncated or corrupt file?)");
  }

  std::string path_;
  int64_t P_ = 0, n_ = 0, n_field_ = 0, n_chi_ = 0;
  H5Id file_;
  Dataset field_, chi_;
};

}  // namespace

std::unique_ptr<PatchSource> make_patch_source(const TrainConfig& cfg) {
  if (cfg.source == "hdf5") return std::make_unique<Hdf5Source>(cfg);
  if (cfg.source == "stream") return std::make_unique<StreamSource>(cfg);
  return std::make_unique<GeneratorSource>(cfg);
}

}  // namespace dq
