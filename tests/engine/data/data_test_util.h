// Builders for token files in the formats the data tests read.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ds::engine::testing {

inline void AppendLe(std::string* out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// nanoGPT: raw little-endian uint16 tokens.
inline std::string NanoGptBytes(const std::vector<uint32_t>& tokens) {
  std::string out;
  for (uint32_t t : tokens) AppendLe(&out, t, 2);
  return out;
}

// llm.c: 256 int32 (magic, version, count, zeros), then tokens of `width` bytes.
inline std::string LlmcBytes(int32_t magic, int32_t version, int64_t count,
                             const std::vector<uint32_t>& tokens, int width) {
  std::string out;
  AppendLe(&out, static_cast<uint32_t>(magic), 4);
  AppendLe(&out, static_cast<uint32_t>(version), 4);
  AppendLe(&out, static_cast<uint32_t>(count), 4);
  out.resize(1024, '\0');
  for (uint32_t t : tokens) AppendLe(&out, t, width);
  return out;
}

}  // namespace ds::engine::testing
