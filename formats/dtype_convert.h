// Converting stored elements between floating dtypes as torch does: narrower floats widen
// exactly; float32 narrows to bfloat16 by rounding to nearest, ties to even (NaN stays a quiet
// NaN of the same sign); float64 narrows to float32 by the hardware's rounding (nearest even).
// Used by `dsckpt export` / `import` and, through the scalar decoders, by `dsckpt diff`.
// Thread safety: pure functions.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>

#include "formats/dtype.h"
#include "io/status.h"

namespace ds::fmt {

inline float BF16ToF32(uint16_t h) {
  const uint32_t u = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Round to nearest even, as torch's c10::BFloat16 (round_to_nearest_even) does.
inline uint16_t F32ToBF16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);  // NaN
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// IEEE binary16 to binary32, exactly (subnormals, infinities and NaN payloads included).
inline float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1fu) {
    u = sign | 0x7f800000u | (man << 13);  // inf or NaN
  } else if (exp != 0) {
    u = sign | ((exp + 112) << 23) | (man << 13);  // 112 = 127 - 15
  } else if (man == 0) {
    u = sign;  // +-0
  } else {
    // Subnormal: shift the mantissa up until its leading 1 becomes the implicit bit.
    exp = 113;  // 127 - 15 + 1
    while ((man & 0x400u) == 0) {
      man <<= 1;
      --exp;
    }
    u = sign | (exp << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// Whether ConvertElements can turn `from` into `to`: equal dtypes, or two floating ones.
bool CanConvert(DType from, DType to);

// Converts the elements in `src` (dtype `from`, little-endian) into `dst` (dtype `to`):
// src.size() / DTypeSize(from) elements, and dst must hold exactly as many of `to`.
// InvalidArgument when the dtypes cannot be converted or the sizes disagree.
Status ConvertElements(DType from, std::span<const std::byte> src, DType to,
                       std::span<std::byte> dst);

}  // namespace ds::fmt
