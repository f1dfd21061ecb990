// libFuzzer target for the chunk decoder. Two modes, chosen by the first byte:
//  - bytes as stored: the next 24 bytes give a descriptor (codec, element size, raw length),
//    the rest are the stored bytes; the stored checksum is fixed up so the parser runs;
//  - encode then damage: the rest is raw data, encoded with a codec, then bytes of the stored
//    form are overwritten (checksum fixed up again), so zstd frames and plane tables that are
//    almost right reach the decoder.
// Decode must return OK or Corruption, never crash; an OK decode must match the raw checksum.
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "formats/chunk_codec.h"
#include "formats/endian.h"

namespace {
void Require(bool c) {
  if (!c) std::abort();
}
constexpr uint64_t kMaxRaw = 1 << 20;  // keep each run cheap
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace ds::fmt;
  if (size < 1) return 0;
  const auto* b = reinterpret_cast<const std::byte*>(data);
  static ChunkDecoder decoder;
  static ChunkEncoder encoder;
  ChunkDescriptor d{};
  std::vector<std::byte> stored;
  if ((data[0] & 1) == 0) {
    if (size < 25) return 0;
    d.codec = static_cast<Codec>(data[1] % 4);  // 3: an unknown codec
    d.elem_size = static_cast<uint8_t>(data[2] % 10);
    d.raw_len = GetU64(b + 3) % (kMaxRaw + 1);
    d.raw_xxh64 = GetU64(b + 11);
    stored.assign(b + 25, b + size);
  } else {
    if (size < 8) return 0;
    const Codec codec = static_cast<Codec>(data[1] % 3);
    const uint8_t elem = static_cast<uint8_t>(1u << (data[2] % 4));
    const size_t edits = data[3] % 8;
    std::vector<std::byte> raw(b + 8, b + size);
    raw.resize(std::min<size_t>(raw.size(), kMaxRaw));
    std::vector<std::byte> out(ChunkEncoder::MaxStoredLen(raw.size()));
    EncodeOptions o;
    o.codec = codec;
    auto enc = encoder.Encode(raw, elem, o, out);
    if (!enc.ok()) return 0;
    stored.assign(out.begin(), out.begin() + static_cast<long>(enc->stored_len));
    d = {enc->codec, enc->raw_len, enc->stored_len, enc->raw_xxh64, enc->stored_xxh64, elem};
    for (size_t e = 0; e < edits && !stored.empty(); ++e) {
      const size_t at = (static_cast<size_t>(data[4 + e % 4]) * 131 + e * 7919) % stored.size();
      stored[at] ^= static_cast<std::byte>(data[(5 + e) % size] | 1);
    }
  }
  d.stored_len = stored.size();
  d.stored_xxh64 = StoredChecksum(d.codec, stored);
  std::vector<std::byte> raw_out(d.raw_len);
  ds::Status s = decoder.Decode(d, stored, raw_out, "fuzz chunk");
  Require(s.ok() || s.code() == ds::StatusCode::kCorruption);
  if (s.ok()) Require(Xxh64(raw_out) == d.raw_xxh64);
  return 0;
}
