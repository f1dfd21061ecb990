// Chunk codecs: how a chunk's raw bytes become its stored bytes, and back. Every chunk carries
// xxh64 of its raw bytes and of its stored bytes (the latter seeded with nothing but preceded
// by the codec byte, so a chunk relabelled with another codec fails its checksum).
//
// Codecs (the byte value is what the manifest stores):
//   0 raw                stored == raw
//   1 zstd               one zstd frame holding the raw bytes (content size in the frame)
//   2 bytegroup+zstd     the raw bytes seen as elements of `elem_size` bytes are split into
//                        elem_size planes (plane k holds byte k of every element, little-endian
//                        order); each plane is stored raw or as one zstd frame, whichever is
//                        smaller. Exponent bytes of floats compress; mantissa bytes do not.
// docs/format.md gives the byte layouts.
// Thread safety: the functions are pure; use one ChunkEncoder/ChunkDecoder per thread (they
// keep zstd contexts and scratch buffers).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "io/status.h"

namespace ds::fmt {

enum class Codec : uint8_t { kRaw = 0, kZstd = 1, kByteGroupZstd = 2 };

std::string_view CodecName(Codec codec);  // "raw", "zstd", "bytegroup+zstd"
Result<Codec> CodecFromName(std::string_view name);
bool IsKnownCodec(uint8_t value);

// Readers refuse chunks that claim more raw bytes than this (no decompression bombs).
inline constexpr uint64_t kMaxChunkRawBytes = uint64_t{256} << 20;

uint64_t Xxh64(std::span<const std::byte> data);
// The stored checksum: xxh64 over the codec byte followed by the stored bytes.
uint64_t StoredChecksum(Codec codec, std::span<const std::byte> stored);

struct EncodeOptions {
  Codec codec = Codec::kByteGroupZstd;
  // zstd level of whole-chunk frames only: codec zstd, and bytegroup+zstd chunks that fall back
  // to it (1-byte elements, or a length that is not a whole number of elements). zstd's rules
  // apply: 0 means its default (3), negative levels are faster, out-of-range ones are clamped.
  // Byte-group planes ignore it: they are always compressed at level -200 (zstd's fast search:
  // byte planes have few, short matches, which cost more than they save) with Huffman-coded
  // literals forced on, which negative levels otherwise leave off.
  int zstd_level = 1;
  // Falls back to raw when the encoded form would keep more than this fraction of the raw
  // size (compression that saves little is not worth its decode time).
  double max_ratio_kept = 0.97;
};

struct EncodedChunk {
  Codec codec;       // what was actually used (raw when compression saved too little)
  uint64_t raw_len;  // bytes
  uint64_t raw_xxh64;
  uint64_t stored_xxh64;
  // stored bytes: the first `stored_len` bytes of the output buffer given to Encode
  uint64_t stored_len;
};

class ChunkEncoder {
 public:
  ChunkEncoder();
  ~ChunkEncoder();
  ChunkEncoder(const ChunkEncoder&) = delete;
  ChunkEncoder& operator=(const ChunkEncoder&) = delete;

  // The most bytes Encode may write for `raw_len` raw bytes (size the output buffer with it).
  static size_t MaxStoredLen(size_t raw_len);

  // Encodes `raw` (elements of `elem_size` bytes; raw.size() must be a multiple of it for
  // bytegroup+zstd, else zstd is used) into `out`, which holds at least MaxStoredLen bytes.
  Result<EncodedChunk> Encode(std::span<const std::byte> raw, size_t elem_size,
                              const EncodeOptions& options, std::span<std::byte> out);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// What the manifest says about a chunk; the decoder trusts none of it without checking.
struct ChunkDescriptor {
  Codec codec;
  uint64_t raw_len;
  uint64_t stored_len;
  uint64_t raw_xxh64;
  uint64_t stored_xxh64;
  uint8_t elem_size;
};

class ChunkDecoder {
 public:
  ChunkDecoder();
  ~ChunkDecoder();
  ChunkDecoder(const ChunkDecoder&) = delete;
  ChunkDecoder& operator=(const ChunkDecoder&) = delete;

  // Verifies the stored checksum, decodes into `out` (exactly desc.raw_len bytes), verifies
  // the raw checksum. Any mismatch (a frame whose content size differs from raw_len, a plane
  // table that does not add up, a checksum) is Corruption; `what` names the chunk in messages
  // ("chunk 17 of rank-00003.dss").
  Status Decode(const ChunkDescriptor& desc, std::span<const std::byte> stored,
                std::span<std::byte> out, std::string_view what);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The byte-group transform alone (tests keep a plain reference beside it).
void ByteGroupSplit(std::span<const std::byte> raw, size_t elem_size, std::span<std::byte> planes);
void ByteGroupJoin(std::span<const std::byte> planes, size_t elem_size, std::span<std::byte> raw);

}  // namespace ds::fmt
