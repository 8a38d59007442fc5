#include "core/nn/checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include "core/error.h"
#include "core/io/h5io.h"
#include "core/io/output_files.h"

namespace dq {

namespace {
constexpr const char* kFormat = "deepqsm-checkpoint";
constexpr int64_t kVersion = 3;

// FNV-1a 64. Byte-serial and slow (~1 GB/s), which is fine next to writing
// the same bytes to disk; the paper's U-Net has 5.6M parameters.
struct Fnv1a {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* data, size_t n) {
    const auto* p = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < n; ++i) {
      h ^= p[i];
      h *= 0x100000001b3ull;
    }
  }
  void add_u64(uint64_t v) {
    unsigned char b[8];
    for (int i = 0; i < 8; ++i) b[i] = static_cast<unsigned char>(v >> (8 * i));
    add(b, 8);
  }
};

std::string hex(uint64_t v) {
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016" PRIx64, v);
  return buf;
}

// The bytes of the floats as stored on little-endian hosts (every platform
// we build for); the hash is then the same on every machine.
void add_params(Fnv1a& f, const ParamLayout& layout, const Tensor& params) {
  for (int i = 0; i < static_cast<int>(layout.params().size()); ++i) {
    const Tensor v = layout.view(params, i);
    f.add(v.raw(), v.nbytes());
  }
}

// As the header defines it for `version` (2 or 3).
uint64_t full_checksum(const ParamLayout& layout, const Tensor& params, const Tensor& m,
                       const Tensor& v, int64_t step, const TrainingState& state, int64_t version) {
  Fnv1a f;
  add_params(f, layout, params);
  f.add(m.raw(), m.nbytes());
  f.add(v.raw(), v.nbytes());
  f.add_u64(static_cast<uint64_t>(step));
  f.add_u64(state.seed);
  if (version >= 3) {
    uint32_t bits = 0;
    std::memcpy(&bits, &state.loss_scale.scale, sizeof bits);
    f.add_u64(bits);
    f.add_u64(static_cast<uint64_t>(state.loss_scale.clean_steps));
    f.add_u64(static_cast<uint64_t>(state.loss_scale.skipped_steps));
  }
  return f.h;
}

// Pushes the temporary file's bytes to the disk before the rename makes it
// the checkpoint, so a power loss cannot leave a renamed but empty file.
void sync_file(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) fail(path, ": cannot reopen the checkpoint to sync it");
  const int rc = ::fsync(fd);
  ::close(fd);
  if (rc != 0) fail(path, ": fsync failed (", std::strerror(errno), ")");
}

CheckpointData read(const std::string& path, bool weights_only) {
  H5File f(path, H5File::Mode::read);
  if (!f.has_attr("/", "format") || f.attr_string("/", "format") != kFormat)
    fail(path, ": not a deepqsm checkpoint (no format attribute '", kFormat, "')");
  CheckpointData ck;
  ck.version = f.attr_int("/", "version");
  if (ck.version < 1 || ck.version > kVersion)
    fail(path, ": checkpoint version ", ck.version,
         " is not supported (this build reads versions 1 to ", kVersion,
         "; a newer version needs a newer deepqsm)");
  // int64 attributes narrowed to int only inside int's range (2^32 + 5 is not 5).
  const auto small_int = [&](const char* key) {
    const int64_t v = f.attr_int("/", key);
    return static_cast<int>(std::clamp<int64_t>(v, -1, 1 << 30));
  };
  ck.model.depth = small_int("depth");
  ck.model.base_filters = small_int("base_filters");
  ck.model.dropout = static_cast<float>(f.attr_double("/", "dropout"));
  ck.model.residual = f.attr_int("/", "residual") != 0;
  ck.model.head_kernel = small_int("head_kernel");
  ck.step = f.attr_int("/", "step");
  ck.config_json = f.attr_string("/", "config");
  if (ck.version >= 2) {
    const std::string seed = f.attr_string("/", "seed");
    char* end = nullptr;
    ck.state.seed = std::strtoull(seed.c_str(), &end, 10);
    if (seed.empty() || *end != '\0')
      fail(path, ": attribute 'seed' is not a number: '", seed, "'");
    ck.state.data_position = f.attr_int("/", "data_position");
  }
  if (ck.version >= 3) {
    // Stored as a double; every float is exactly a double, so this is lossless.
    ck.state.loss_scale.scale = static_cast<float>(f.attr_double("/", "loss_scale"));
    ck.state.loss_scale.clean_steps = f.attr_int("/", "loss_scale_clean_steps");
    ck.state.loss_scale.skipped_steps = f.attr_int("/", "skipped_steps");
  }
  // Checked here, with the file's name, before UNet allocates what they
  // imply: a forged depth or width would ask for terabytes.
  const UNetConfig& m = ck.model;
  if (m.depth < kMinDepth || m.depth > kMaxDepth || m.base_filters < 1 ||
      m.base_filters > kMaxBaseFilters || (m.head_kernel != 1 && m.head_kernel != 3) ||
      !(m.dropout >= 0.0f && m.dropout < 1.0f))
    fail(path, ": the model it describes (", describe_architecture(m), ", dropout ", m.dropout,
         ") is outside what deepqsm builds (depth ", kMinDepth, "..", kMaxDepth,
         ", base_filters 1..", kMaxBaseFilters, ", head_kernel 1 or 3, dropout in [0, 1))");
  UNet net(ck.model);
  const ParamLayout& layout = net.layout();
  ck.params = Tensor::zeros(Shape{layout.total()});
  for (int i = 0; i < static_cast<int>(layout.params().size()); ++i) {
    const ParamInfo& p = layout[i];
    std::vector<int64_t> dims;
    std::vector<float> data = f.read_floats("params/" + p.name, &dims);
    if (dims != p.shape.dims)
      fail(path, ": parameter ", p.name, " has shape ", Shape(dims).str(), ", the model needs ",
           p.shape.str());
    Tensor v = layout.view(ck.params, i);
    std::copy(data.begin(), data.end(), v.f32());
  }
  if (const std::string bad = first_non_finite(net, ck.params); !bad.empty())
    fail(path, ": the weights are not finite (", bad,
         "): the run that wrote them diverged; use an earlier checkpoint");
  if (ck.version >= 2) {
    const std::string stored = f.attr_string("/", "checksum_params");
    const std::string computed = hex(params_checksum(net, ck.params));
    if (stored != computed)
      fail(path, ": corrupt checkpoint: the parameters' checksum is ", computed, ", the file says ",
           stored, " (the file was damaged after it was written)");
  }
  if (!weights_only && f.exists("adam")) {
    for (auto [name, dst] : {std::pair{"adam/m", &ck.adam_m}, std::pair{"adam/v", &ck.adam_v}}) {
      std::vector<float> data = f.read_floats(name);
      if (static_cast<int64_t>(data.size()) != layout.total())
        fail(path, ": ", name, " has ", data.size(), " values, the model needs ", layout.total());
      *dst = Tensor::zeros(Shape{layout.total()});
      std::copy(data.begin(), data.end(), dst->f32());
    }
    if (const std::string bad = first_non_finite(net, ck.params, &ck.adam_m, &ck.adam_v);
        !bad.empty())
      fail(path, ": the Adam moments are not finite (", bad,
           "): the run that wrote them diverged; resume from an earlier checkpoint");
    if (ck.version >= 2) {
      const std::string stored = f.attr_string("/", "checksum");
      const std::string computed = hex(
          full_checksum(layout, ck.params, ck.adam_m, ck.adam_v, ck.step, ck.state, ck.version));
      if (stored != computed)
        fail(path, ": corrupt checkpoint: the checksum of parameters, Adam moments, step, seed ",
             "and loss scale is ", computed, ", the file says ", stored,
             " (the file was damaged after it was written)");
    }
  }
  return ck;
}

}  // namespace

std::string first_non_finite(const UNet& net, const Tensor& params, const Tensor* adam_m,
                             const Tensor* adam_v) {
  const auto scan = [](const std::string& name, const float* p, int64_t n) -> std::string {
    for (int64_t i = 0; i < n; ++i)
      if (!std::isfinite(p[i]))
        return name + "[" + std::to_string(i) + "] = " +
               (std::isnan(p[i]) ? "nan"
                : p[i] > 0       ? "inf"
                                 : "-inf");
    return "";
  };
  const ParamLayout& layout = net.layout();
  for (int i = 0; i < static_cast<int>(layout.params().size()); ++i) {
    const Tensor v = layout.view(params, i);
    std::string bad = scan(layout[i].name, v.f32(), v.numel());
    if (!bad.empty()) return bad;
  }
  for (auto [name, t] : {std::pair{"adam/m", adam_m}, std::pair{"adam/v", adam_v}})
    if (t) {
      std::string bad = scan(name, t->f32(), t->numel());
      if (!bad.empty()) return bad;
    }
  return "";
}

uint64_t params_checksum(const UNet& net, const Tensor& params) {
  DQ_CHECK(params.numel() == net.layout().total(),
           "checksum: parameter buffer does not match the model");
  Fnv1a f;
  add_params(f, net.layout(), params);
  return f.h;
}

void save_checkpoint(const std::string& path, const UNet& net, const Tensor& params,
                     const Tensor* adam_m, const Tensor* adam_v, int64_t step,
                     const std::string& config_json, const TrainingState& state) {
  const ParamLayout& layout = net.layout();
  DQ_CHECK(params.numel() == layout.total(),
           "checkpoint: parameter buffer does not match the model");
  const bool moments = adam_m && adam_v;
  if (moments)
    DQ_CHECK(adam_m->numel() == layout.total() && adam_v->numel() == layout.total(),
             "checkpoint: Adam moments do not match the model");
  // A diverged run's weights would be accepted by every reader that does
  // not check them; the trainer stops before this with the step and value.
  const std::string bad =
      first_non_finite(net, params, moments ? adam_m : nullptr, moments ? adam_v : nullptr);
  if (!bad.empty())
    fail(path, ": not written: the weights of step ", step, " are not finite (", bad,
         "); the run diverged");
  // A failed write (full disk, a folder in the way of the rename) leaves
  // neither a temporary file nor a half-written checkpoint behind.
  PendingFile out(path);
  const std::string& tmp = out.tmp();
  {
    H5File f(tmp, H5File::Mode::truncate);
    const UNetConfig& m = net.config();
    f.set_attr("/", "format", std::string(kFormat));
    f.set_attr("/", "version", kVersion);
    f.set_attr("/", "step", step);
    f.set_attr("/", "config", config_json);
    f.set_attr("/", "depth", static_cast<int64_t>(m.depth));
    f.set_attr("/", "base_filters", static_cast<int64_t>(m.base_filters));
    f.set_attr("/", "dropout", static_cast<double>(m.dropout));
    f.set_attr("/", "residual", static_cast<int64_t>(m.residual));
    f.set_attr("/", "head_kernel", static_cast<int64_t>(m.head_kernel));
    // A decimal string: HDF5 attributes here are int64, and seeds use all 64 bits.
    f.set_attr("/", "seed", std::to_string(state.seed));
    f.set_attr("/", "data_position", state.data_position);
    f.set_attr("/", "loss_scale", static_cast<double>(state.loss_scale.scale));
    f.set_attr("/", "loss_scale_clean_steps", state.loss_scale.clean_steps);
    f.set_attr("/", "skipped_steps", state.loss_scale.skipped_steps);
    f.set_attr("/", "checksum_params", hex(params_checksum(net, params)));
    f.create_group("params");
    for (int i = 0; i < static_cast<int>(layout.params().size()); ++i) {
      Tensor v = layout.view(params, i);
      f.write_floats("params/" + layout[i].name, v.shape().dims, v.f32());
    }
    if (moments) {
      f.create_group("adam");
      f.write_floats("adam/m", {adam_m->numel()}, adam_m->f32());
      f.write_floats("adam/v", {adam_v->numel()}, adam_v->f32());
      f.set_attr("/", "checksum",
                 hex(full_checksum(layout, params, *adam_m, *adam_v, step, state, kVersion)));
    } else {
      Tensor none = Tensor::zeros(Shape{0});
      f.set_attr("/", "checksum",
                 hex(full_checksum(layout, params, none, none, step, state, kVersion)));
    }
    f.flush();
    f.close();
    sync_file(tmp);
  }
  out.finish();
}

namespace {

// Some damaged HDF5 files make libhdf5 itself loop for minutes or for ever
// (a global heap read, found by tests/fuzz/fuzz_checkpoint.cpp; it did not
// finish in 120 s). A checkpoint of the paper's size loads in well under a
// second, so a read still running after kCheckpointReadSeconds ends the
// process with one line instead of hanging it; nothing else can interrupt
// the library call.
class ReadWatchdog {
 public:
  explicit ReadWatchdog(const std::string& path)
      : thread_([this, path] {
          std::unique_lock<std::mutex> lock(mutex_);
          if (cv_.wait_for(lock, std::chrono::seconds(kCheckpointReadSeconds),
                           [this] { return done_; }))
            return;
          std::fprintf(stderr,
                       "%s: %s: libhdf5 has read this file for %d s without finishing (a damaged "
                       "file can make it loop); giving up\n",
                       program_invocation_short_name, path.c_str(), kCheckpointReadSeconds);
          std::fflush(stderr);
          std::_Exit(1);
        }) {}
  ~ReadWatchdog() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      done_ = true;
    }
    cv_.notify_one();
    thread_.join();
  }
  ReadWatchdog(const ReadWatchdog&) = delete;
  ReadWatchdog& operator=(const ReadWatchdog&) = delete;

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;  // last: starts once the members above exist
};

}  // namespace

CheckpointData load_checkpoint(const std::string& path, bool weights_only) {
  const ReadWatchdog watchdog(path);
  try {
    return read(path, weights_only);
  } catch (const Error& e) {
    const std::string msg = e.what();
    // Messages from the checks above already start with the path; HDF5-level
    // failures (a truncated file) do too, but say nothing about what to do.
    if (msg.find("corrupt checkpoint") != std::string::npos ||
        msg.find("not finite") != std::string::npos ||
        msg.find("outside what deepqsm builds") != std::string::npos ||
        msg.find("not a deepqsm checkpoint") != std::string::npos ||
        msg.find("is not supported") != std::string::npos ||
        msg.find("no such file") != std::string::npos)
      throw;
    fail(msg, "; cannot load this checkpoint (truncated or damaged file?)");
  }
}

}  // namespace dq
