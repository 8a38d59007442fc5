// CUDA's host conversions between float and half / bfloat16 (round to
// nearest even, NaN to 0x7fff, overflow to infinity), and the two
// intrinsics that need a library call.
#include <cmath>
#include <cstring>

#include "cuda/emu/internal.h"

namespace {
uint32_t bits(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  return x;
}
float from_bits(uint32_t x) {
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}
}  // namespace

__half __float2half_rn(float f) {
  const uint32_t x = bits(f), sign = (x >> 16) & 0x8000u, ax = x & 0x7fffffffu;
  if (ax > 0x7f800000u) return __half{0x7fff};
  if (ax >= 0x477ff000u) return __half{static_cast<uint16_t>(sign | 0x7c00u)};  // >= 65520
  if (ax >= 0x38800000u) {                                                      // a normal half
    const uint32_t mant = ax & 0x7fffffu;
    uint32_t h = ((((ax >> 23) - 127 + 15) << 10) | (mant >> 13));
    const uint32_t rem = mant & 0x1fffu;
    if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
    return __half{static_cast<uint16_t>(sign | h)};
  }
  if (ax < 0x33000000u) return __half{static_cast<uint16_t>(sign)};  // below 2^-25: zero
  // Subnormal: value / 2^-24 = mant * 2^(e - 126), e the float's exponent field.
  const uint32_t mant = (ax & 0x7fffffu) | 0x800000u;
  const int shift = 126 - static_cast<int>(ax >> 23);
  uint32_t h = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
  if (rem > half || (rem == half && (h & 1u))) ++h;
  return __half{static_cast<uint16_t>(sign | h)};
}

float __half2float(__half v) {
  const uint32_t h = v.__x, sign = (h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0x1f) return from_bits(sign | 0x7f800000u | (m << 13));
  if (e != 0) return from_bits(sign | ((e - 15 + 127) << 23) | (m << 13));
  const float mag = std::ldexp(static_cast<float>(m), -24);  // subnormal or zero, exact
  return sign ? -mag : mag;
}

__nv_bfloat16 __float2bfloat16_rn(float f) {
  const uint32_t x = bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{0x7fff};
  const uint32_t r = x + 0x7fffu + ((x >> 16) & 1u);
  return __nv_bfloat16{static_cast<uint16_t>(r >> 16)};
}

float __bfloat162float(__nv_bfloat16 v) {
  return from_bits(static_cast<uint32_t>(v.__x) << 16);
}

float __fsqrt_rn(float a) {
  return std::sqrt(a);
}
float __fmaf_rn(float a, float b, float c) {
  return std::fma(a, b, c);
}
