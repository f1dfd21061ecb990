// libFuzzer target for the shard header and shard file names: any bytes decode or fail with
// Corruption; a header that decodes re-encodes to the same fields.
#include <cstdint>
#include <cstdlib>
#include <string_view>
#include <vector>

#include "formats/shard_file.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ds::fmt;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  uint32_t rank = 0;
  if (ParseShardFileName(text, &rank) && ShardFileName(rank) != text) std::abort();
  std::vector<std::byte> bytes(reinterpret_cast<const std::byte*>(data),
                               reinterpret_cast<const std::byte*>(data) + size);
  // Short inputs are padded into a valid-looking header half the time, so the checks past the
  // magic and checksum are reached too.
  if (size < kShardHeaderBytes && size > 0 && (data[0] & 1)) {
    std::vector<std::byte> h(kShardHeaderBytes);
    EncodeShardHeader({kShardFormatVersion, 3, 0, "fuzz"}, h);
    for (size_t i = 0; i < size; ++i) h[(i * 37) % (kShardHeaderBytes - 8)] = bytes[i];
    bytes = h;
  }
  auto r = DecodeShardHeader(bytes, "fuzz.dss");
  if (!r.ok() && r.status().code() != ds::StatusCode::kCorruption) std::abort();
  if (r.ok()) {
    std::vector<std::byte> again(kShardHeaderBytes);
    EncodeShardHeader(*r, again);
    auto back = DecodeShardHeader(again, "fuzz.dss");
    if (!back.ok() || back->rank != r->rank || back->writer_version != r->writer_version) {
      std::abort();
    }
  }
  return 0;
}
