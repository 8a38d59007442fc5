// Counter-based randomness (Philox4x32-10, Salmon et al. SC'11). The same
// header compiles for host and device so the CPU and CUDA backends draw the
// same dropout mask for the same key; no state is carried between calls, so
// a run is reproducible and resumable from (seed, step, rank, purpose).
#pragma once
#include <cstdint>

#include "core/hd.h"

namespace dq {

struct Philox4 {
  uint32_t v[4];
};

DQ_HD uint32_t mulhilo32(uint32_t a, uint32_t b, uint32_t* hi) {
  uint64_t p = static_cast<uint64_t>(a) * b;
  *hi = static_cast<uint32_t>(p >> 32);
  return static_cast<uint32_t>(p);
}

// Ten rounds of Philox4x32 over counter c with 64-bit key k.
DQ_HD Philox4 philox4x32(Philox4 c, uint64_t key) {
  uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
  for (int r = 0; r < 10; ++r) {
    uint32_t hi0, hi1;
    uint32_t lo0 = mulhilo32(0xD2511F53u, c.v[0], &hi0);
    uint32_t lo1 = mulhilo32(0xCD9E8D57u, c.v[2], &hi1);
    c = Philox4{{hi1 ^ c.v[1] ^ k0, lo1, hi0 ^ c.v[3] ^ k1, lo0}};
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  return c;
}

DQ_HD float uniform24(uint32_t bits) { return static_cast<float>(bits >> 8) * (1.0f / 16777216.0f); }

// Uniform in [0, 1) with 24 random bits, for element `index` under `key`.
// One Philox call yields four words, so elements 4g .. 4g+3 share the
// counter g and take word (index mod 4): a loop over groups of four
// (philox_uniform4) costs a quarter of one call per element and gives the
// same numbers.
DQ_HD float philox_uniform(uint64_t key, uint64_t index) {
  uint64_t g = index >> 2;
  Philox4 c{{static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), 0u, 0u}};
  return uniform24(philox4x32(c, key).v[index & 3]);
}

// The four uniforms of elements 4g .. 4g+3.
DQ_HD void philox_uniform4(uint64_t key, uint64_t g, float out[4]) {
  Philox4 r = philox4x32(Philox4{{static_cast<uint32_t>(g), static_cast<uint32_t>(g >> 32), 0u, 0u}}, key);
  for (int j = 0; j < 4; ++j) out[j] = uniform24(r.v[j]);
}

// Derives a child key from a parent key and a purpose/index (splitmix64),
// e.g. key_for(key_for(seed, step), layer).
DQ_HD uint64_t key_for(uint64_t parent, uint64_t child) {
  uint64_t z = parent + 0x9E3779B97F4A7C15ull * (child + 1);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

}  // namespace dq
