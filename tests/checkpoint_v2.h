// Writes a version 2 checkpoint as the release before loss scaling did (no
// loss-scale attributes, a checksum without their bytes), to test that
// such files still load and resume. The checksum is computed here from the
// format's definition in core/nn/checkpoint.h, not by the code under test.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

#include "core/io/h5io.h"
#include "core/nn/checkpoint.h"

namespace dq::test {

inline void write_v2_checkpoint(const std::string& path, const UNet& net, const CheckpointData& ck,
                                const std::string& config_json) {
  struct Fnv {  // FNV-1a 64
    uint64_t h = 0xcbf29ce484222325ull;
    void add(const void* p, size_t n) {
      for (size_t i = 0; i < n; ++i) {
        h ^= static_cast<const unsigned char*>(p)[i];
        h *= 0x100000001b3ull;
      }
    }
    void add_u64(uint64_t v) {
      for (int i = 0; i < 8; ++i) {
        const unsigned char b = static_cast<unsigned char>(v >> (8 * i));
        add(&b, 1);
      }
    }
  };
  auto hex = [](uint64_t v) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return std::string(buf);
  };
  const UNetConfig& m = net.config();
  const ParamLayout& layout = net.layout();
  H5File f(path, H5File::Mode::truncate);
  f.set_attr("/", "format", std::string("deepqsm-checkpoint"));
  f.set_attr("/", "version", int64_t{2});
  f.set_attr("/", "step", ck.step);
  f.set_attr("/", "config", config_json);
  f.set_attr("/", "depth", int64_t{m.depth});
  f.set_attr("/", "base_filters", int64_t{m.base_filters});
  f.set_attr("/", "dropout", static_cast<double>(m.dropout));
  f.set_attr("/", "residual", int64_t{m.residual});
  f.set_attr("/", "head_kernel", int64_t{m.head_kernel});
  f.set_attr("/", "seed", std::to_string(ck.state.seed));
  f.set_attr("/", "data_position", ck.state.data_position);
  f.set_attr("/", "checksum_params", hex(params_checksum(net, ck.params)));
  f.create_group("params");
  Fnv full;
  for (int i = 0; i < static_cast<int>(layout.params().size()); ++i) {
    const Tensor v = layout.view(ck.params, i);
    f.write_floats("params/" + layout[i].name, v.shape().dims, v.f32());
    full.add(v.raw(), v.nbytes());
  }
  f.create_group("adam");
  f.write_floats("adam/m", {ck.adam_m.numel()}, ck.adam_m.f32());
  f.write_floats("adam/v", {ck.adam_v.numel()}, ck.adam_v.f32());
  full.add(ck.adam_m.raw(), ck.adam_m.nbytes());
  full.add(ck.adam_v.raw(), ck.adam_v.nbytes());
  full.add_u64(static_cast<uint64_t>(ck.step));
  full.add_u64(ck.state.seed);
  f.set_attr("/", "checksum", hex(full.h));
}

}  // namespace dq::test
