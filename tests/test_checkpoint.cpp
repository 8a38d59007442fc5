// Checkpoints: a round trip keeps every value, and files that are not
// deepqsm checkpoints (or of another version) are refused with one line.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "core/error.h"
#include "core/io/h5io.h"
#include "core/io/output_files.h"
#include "core/nn/checkpoint.h"
#include "tests/checkpoint_v2.h"

using namespace dq;

namespace {
std::string temp_path(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / "deepqsm-test-checkpoint";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
}
// Two levels of two filters: a checkpoint of a few hundred parameters.
UNet smallest_net() {
  UNetConfig cfg;
  cfg.depth = 2;
  cfg.base_filters = 2;
  return UNet(cfg);
}
}  // namespace

TEST_CASE("Checkpoint round trip", "[checkpoint]") {
  UNetConfig cfg;
  cfg.depth = 3;
  cfg.base_filters = 4;
  cfg.residual = true;
  cfg.dropout = 0.1f;
  UNet net(cfg);
  const Shape flat{net.layout().total()};
  Tensor p = Tensor::zeros(flat), m = Tensor::zeros(flat), v = Tensor::zeros(flat);
  net.init_he(p, 3);
  for (int64_t i = 0; i < flat.numel(); ++i) {
    m.f32()[i] = 0.5f * p.f32()[i];
    v.f32()[i] = p.f32()[i] * p.f32()[i];
  }
  std::string path = temp_path("roundtrip.h5");
  save_checkpoint(path, net, p, &m, &v, 42, "{\"name\": \"t\"}");
  CHECK_FALSE(std::filesystem::exists(dq::temporary_name(path)));

  CheckpointData ck = load_checkpoint(path);
  CHECK(ck.step == 42);
  CHECK(ck.config_json == "{\"name\": \"t\"}");
  CHECK(ck.model.depth == 3);
  CHECK(ck.model.base_filters == 4);
  CHECK(ck.model.residual);
  CHECK(ck.model.dropout == Approx(0.1f));
  // Alignment gaps are zero in both, so the whole buffers compare equal.
  CHECK(std::equal(p.f32(), p.f32() + p.numel(), ck.params.f32()));
  CHECK(std::equal(m.f32(), m.f32() + m.numel(), ck.adam_m.f32()));
  CHECK(std::equal(v.f32(), v.f32() + v.numel(), ck.adam_v.f32()));

  CheckpointData w = load_checkpoint(path, true);
  CHECK_FALSE(w.adam_m.defined());
}

TEST_CASE("Checkpoint loading refuses foreign files", "[checkpoint]") {
  SECTION("an HDF5 file that is not a checkpoint") {
    std::string path = temp_path("foreign.h5");
    {
      H5File f(path, H5File::Mode::truncate);
      f.set_attr("/", "format", std::string("something-else"));
    }
    CHECK_THROWS_WITH(load_checkpoint(path), Catch::Contains("not a deepqsm checkpoint"));
  }
  SECTION("a checkpoint of an unknown version") {
    std::string path = temp_path("version.h5");
    {
      H5File f(path, H5File::Mode::truncate);
      f.set_attr("/", "format", std::string("deepqsm-checkpoint"));
      f.set_attr("/", "version", int64_t{99});
    }
    CHECK_THROWS_WITH(load_checkpoint(path), Catch::Contains("version 99"));
  }
  SECTION("a missing file") {
    CHECK_THROWS_AS(load_checkpoint(temp_path("does-not-exist.h5")), Error);
  }
}

namespace {
// Saves a small checkpoint with recognisable values and returns its path.
std::string saved_checkpoint(const std::string& name, UNet& net, Tensor& p) {
  const Shape flat{net.layout().total()};
  p = Tensor::zeros(flat);
  net.init_he(p, 11);
  Tensor m = Tensor::zeros(flat), v = Tensor::zeros(flat);
  std::fill(v.f32(), v.f32() + v.numel(), 1e-6f);
  const std::string path = temp_path(name);
  TrainingState st;
  st.seed = 0xFEDCBA9876543210ull;  // needs all 64 bits
  st.data_position = 5;
  st.loss_scale.scale = 0x1p100f;  // beyond any int64 and any fp16 value
  st.loss_scale.clean_steps = 3;
  st.loss_scale.skipped_steps = 9;
  save_checkpoint(path, net, p, &m, &v, 7, "{}", st);
  return path;
}

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}
}  // namespace

TEST_CASE("Checkpoint v3 keeps the training state", "[checkpoint]") {
  UNet net = smallest_net();
  Tensor p;
  const std::string path = saved_checkpoint("state.h5", net, p);
  const CheckpointData ck = load_checkpoint(path);
  CHECK(ck.version == 3);
  CHECK(ck.state.seed == 0xFEDCBA9876543210ull);
  CHECK(ck.state.data_position == 5);
  CHECK(ck.state.loss_scale.scale == 0x1p100f);
  CHECK(ck.state.loss_scale.clean_steps == 3);
  CHECK(ck.state.loss_scale.skipped_steps == 9);
  H5File f(path, H5File::Mode::read);
  CHECK(f.attr_string("/", "checksum_params").size() == 16);
  CHECK(f.attr_string("/", "checksum").size() == 16);
  // What deepqsm-infer reads: weights only, /params/<name> datasets.
  CHECK(f.exists("params/enc0.conv0.w"));
  const CheckpointData w = load_checkpoint(path, true);
  CHECK(std::equal(p.f32(), p.f32() + p.numel(), w.params.f32()));
}

TEST_CASE("Damaged checkpoints are refused with a clear message", "[checkpoint]") {
  UNet net = smallest_net();
  Tensor p;
  const std::string good = saved_checkpoint("good.h5", net, p);
  const std::string bytes = slurp(good);

  SECTION("a flipped bit in a parameter") {
    // Datasets are stored contiguously, so the first weight's bytes appear
    // verbatim in the file; flip one bit of them.
    const Tensor w0 = net.layout().view(p, 0);
    const size_t at = bytes.find(std::string(static_cast<const char*>(w0.raw()), 16));
    REQUIRE(at != std::string::npos);
    std::string bad = bytes;
    bad[at + 1] = static_cast<char>(bad[at + 1] ^ 0x10);
    const std::string path = temp_path("flipped.h5");
    std::ofstream(path, std::ios::binary) << bad;
    CHECK_THROWS_WITH(load_checkpoint(path, true),
                      Catch::Contains("flipped.h5") && Catch::Contains("corrupt checkpoint"));
    CHECK_THROWS_WITH(load_checkpoint(path), Catch::Contains("corrupt checkpoint"));
  }
  SECTION("a flipped bit in an Adam moment") {
    std::string bad = bytes;
    const float one_e6 = 1e-6f;
    const size_t at = bad.find(std::string(reinterpret_cast<const char*>(&one_e6), 4));
    REQUIRE(at != std::string::npos);
    bad[at] = static_cast<char>(bad[at] ^ 0x01);
    const std::string path = temp_path("moment.h5");
    std::ofstream(path, std::ios::binary) << bad;
    CHECK_NOTHROW(load_checkpoint(path, true));  // the weights are intact
    CHECK_THROWS_WITH(load_checkpoint(path), Catch::Contains("corrupt checkpoint"));
  }
  SECTION("a flipped bit in the loss scale") {
    // The attribute is a double; 2^100 has a distinctive byte pattern.
    const double scale = 0x1p100;
    std::string bad = bytes;
    const size_t at = bad.find(std::string(reinterpret_cast<const char*>(&scale), 8));
    REQUIRE(at != std::string::npos);
    bad[at + 6] = static_cast<char>(bad[at + 6] ^ 0x01);
    const std::string path = temp_path("scale.h5");
    std::ofstream(path, std::ios::binary) << bad;
    CHECK_NOTHROW(load_checkpoint(path, true));  // inference needs none of it
    CHECK_THROWS_WITH(load_checkpoint(path), Catch::Contains("corrupt checkpoint"));
  }
  SECTION("a truncated file") {
    const std::string path = temp_path("truncated.h5");
    std::ofstream(path, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    CHECK_THROWS_WITH(load_checkpoint(path),
                      Catch::Contains("truncated.h5") &&
                          (Catch::Contains("truncated") || Catch::Contains("corrupt")));
  }
}

TEST_CASE("Version 2 checkpoints (before loss scaling) still load", "[checkpoint]") {
  UNet net = smallest_net();
  Tensor p;
  const CheckpointData v3 = load_checkpoint(saved_checkpoint("for-v2.h5", net, p));
  const std::string path = temp_path("v2.h5");
  test::write_v2_checkpoint(path, net, v3, v3.config_json);
  const CheckpointData v2 = load_checkpoint(path);
  CHECK(v2.version == 2);
  CHECK(v2.step == v3.step);
  CHECK(v2.state.seed == v3.state.seed);
  CHECK(v2.state.loss_scale.scale == 0.0f);  // a run without loss scaling
  CHECK(v2.state.loss_scale.skipped_steps == 0);
  CHECK(std::equal(v3.adam_v.f32(), v3.adam_v.f32() + v3.adam_v.numel(), v2.adam_v.f32()));
}
