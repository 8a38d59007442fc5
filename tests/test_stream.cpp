// The streaming producer (synth/stream.h): batch k is a pure function of
// (config, k), whatever the thread's timing, the worker count or the step
// a stream starts at; batches mix volumes; small training sets are cached;
// the trainer does not wait once the producer is ahead.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <set>
#include <thread>
#include <utility>

#include "core/error.h"
#include "synth/stream.h"

using namespace dq;

namespace {

StreamConfig tiny_stream() {
  StreamConfig c;
  c.recipe.volume_size = 24;
  c.recipe.cubes_min = 2;
  c.recipe.cubes_max = 4;
  c.recipe.spheres_min = 2;
  c.recipe.spheres_max = 4;
  c.recipe.patch_size = 8;
  c.recipe.patches_per_volume = 5;
  c.seed = 3;
  c.batch = 4;
  c.pool = 3;  // 15 patches per group: 3 batches, 3 patches left over
  return c;
}

bool same(const Tensor& a, const Tensor& b) {
  return a.shape() == b.shape() && std::memcmp(a.raw(), b.raw(), a.nbytes()) == 0;
}

}  // namespace

TEST_CASE("stream batches are the pure function make_batch(cfg, step)", "[synth]") {
  StreamConfig cfg = tiny_stream();
  REQUIRE(cfg.batches_per_group() == 3);
  const int steps = 8;  // across two group boundaries
  std::vector<Batch> want;
  for (int k = 0; k < steps; ++k) want.push_back(make_batch(cfg, k));

  SECTION("one worker, unbounded volumes") {
    PatchStream s(cfg);
    for (int k = 0; k < steps; ++k) {
      const Batch b = s.next();
      CHECK(b.step == k);
      CHECK(same(b.field, want[static_cast<size_t>(k)].field));
      CHECK(same(b.chi, want[static_cast<size_t>(k)].chi));
    }
  }
  SECTION("two workers and a slow reader give the same batches") {
    cfg.workers = 2;
    PatchStream s(cfg);
    for (int k = 0; k < steps; ++k) {
      std::this_thread::sleep_for(std::chrono::milliseconds(k % 3 == 0 ? 20 : 0));
      CHECK(same(s.next().chi, want[static_cast<size_t>(k)].chi));
    }
  }
  SECTION("resuming at step 4 (mid group) continues bit for bit") {
    PatchStream s(cfg, 4);
    CHECK(s.next_step() == 4);
    for (int k = 4; k < steps; ++k) {
      const Batch b = s.next();
      CHECK(b.step == k);
      CHECK(same(b.field, want[static_cast<size_t>(k)].field));
    }
  }
}

TEST_CASE("a batch mixes volumes and a group deals each patch once", "[synth]") {
  StreamConfig cfg = tiny_stream();
  cfg.recipe.patches_per_volume = 20;
  cfg.pool = 4;
  cfg.batch = 8;  // 80 patches per group, 10 batches
  std::set<std::pair<int64_t, int>> seen;
  double volumes_per_batch = 0;
  for (int64_t k = 0; k < cfg.batches_per_group(); ++k) {
    std::set<int64_t> vols;
    for (const PatchRef& p : batch_patches(cfg, k)) {
      CHECK(p.volume >= 0);
      CHECK(p.volume < 4);
      CHECK(seen.insert({p.volume, p.patch}).second);
      vols.insert(p.volume);
    }
    volumes_per_batch += static_cast<double>(vols.size());
  }
  CHECK(seen.size() == 80);
  // 8 draws from 4 volumes of 20: about 3.6 distinct volumes a batch.
  CHECK(volumes_per_batch / cfg.batches_per_group() > 3.0);
  // The next group holds the next volumes; a finite set cycles.
  CHECK(batch_patches(cfg, 10)[0].volume >= 4);
  cfg.train_volumes = 6;
  CHECK(cfg.group_volumes() == 4);
  CHECK(cfg.volume_of(1, 3) == 1);  // slot 7 of a 6-volume set
  CHECK(batch_patches(cfg, 3) == batch_patches(cfg, 3));
}

TEST_CASE("small training sets are generated once and cached", "[synth]") {
  StreamConfig cfg = tiny_stream();
  cfg.train_volumes = 2;
  cfg.pool = 8;  // capped at the set: 2 volumes per group
  REQUIRE(cfg.group_volumes() == 2);
  PatchStream s(cfg);
  for (int k = 0; k < 12; ++k) CHECK(same(s.next().field, make_batch(cfg, k).field));
  CHECK(s.volumes_generated() == 2);
}

TEST_CASE("the reader does not wait once the producer is ahead", "[synth]") {
  StreamConfig cfg = tiny_stream();
  PatchStream s(cfg);
  s.next();  // the first group: start-up, waited for
  const double startup = s.wait_seconds();
  // Each step "trains" for 30 ms; a 24^3 group takes a few ms to make.
  for (int k = 1; k < 12; ++k) {
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    s.next();
  }
  CHECK(s.wait_seconds() - startup < 0.05);
}

TEST_CASE("validation patches come from their own volume range", "[synth]") {
  const StreamConfig cfg = tiny_stream();
  const PatchSet v = validation_patches(cfg, 2);
  const PatchSet want = generate_patches(cfg.recipe, cfg.seed, kValidationVolumeBase, 2);
  CHECK(same(v.field, want.field));
  CHECK(same(v.chi, want.chi));
}

TEST_CASE("invalid stream settings are refused", "[synth]") {
  StreamConfig cfg = tiny_stream();
  cfg.batch = 0;
  CHECK_THROWS_AS(PatchStream(cfg), Error);
  cfg = tiny_stream();
  cfg.train_volumes = 1;
  cfg.batch = 6;  // more than 1 x 5 patches
  CHECK_THROWS_WITH(batch_patches(cfg, 0), Catch::Contains("larger than the training set"));
  cfg = tiny_stream();
  cfg.device = "tpu";
  CHECK_THROWS_AS(cfg.validate(), Error);
  cfg = tiny_stream();
  CHECK_THROWS_AS(batch_patches(cfg, -1), Error);
}
