// Little-endian fixed-width integers in byte buffers (every on-disk integer of dstrain is
// little-endian). Thread safety: pure functions.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace ds::fmt {

inline void PutLE(std::byte* p, uint64_t v, size_t width) {
  for (size_t i = 0; i < width; ++i) p[i] = static_cast<std::byte>((v >> (8 * i)) & 0xff);
}
inline uint64_t GetLE(const std::byte* p, size_t width) {
  uint64_t v = 0;
  for (size_t i = 0; i < width; ++i) v |= static_cast<uint64_t>(p[i]) << (8 * i);
  return v;
}
inline void PutU32(std::byte* p, uint32_t v) { PutLE(p, v, 4); }
inline void PutU64(std::byte* p, uint64_t v) { PutLE(p, v, 8); }
inline uint32_t GetU32(const std::byte* p) { return static_cast<uint32_t>(GetLE(p, 4)); }
inline uint64_t GetU64(const std::byte* p) { return GetLE(p, 8); }

}  // namespace ds::fmt
