// Checkpoints: a round trip keeps every value, and files that are not
// deepqsm checkpoints (or of another version) are refused with one line.
#include <catch2/catch.hpp>

#include <filesystem>

#include "core/error.h"
#include "core/h5io.h"
#include "core/checkpoint.h"

using namespace dq;

namespace {
std::string temp_path(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / "deepqsm-test-checkpoint";
  std::filesystem::create_directories(dir);
  return (dir / name).string();
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
  CHECK_FALSE(std::filesystem::exists(path + ".tmp"));

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
