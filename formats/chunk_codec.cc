// Chunk codecs. Invariant kept by the decoder: no byte of a chunk is parsed or decompressed
// before its stored checksum (codec byte + stored bytes) matched, and no output is returned
// before its raw checksum matched. Sizes read from a chunk are checked against the caller's
// pre-sized output and never used to allocate (scratch is sized by that output).
#include "formats/chunk_codec.h"

#include <xxhash.h>
#define ZSTD_STATIC_LINKING_ONLY  // for ZSTD_c_literalCompressionMode (a plain setParameter)
#include <zstd.h>
#include <zstd_errors.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <functional>
#include <string>

#include "formats/internal/bytegroup.h"

namespace ds::fmt {
namespace {

// ---- bytegroup+zstd layout ---------------------------------------------------------------------
//   [u8 elem_size E (1..8)][u8 0][u16 0]                         4 bytes
//   E x [u8 plane_codec (0 raw, 1 zstd)][u8 0 x3][u32 plane_stored_len, little-endian]
//   plane 0 stored bytes, ..., plane E-1 stored bytes
inline constexpr size_t kTableHeaderBytes = 4;
inline constexpr size_t kTableEntryBytes = 8;
inline constexpr size_t kMaxTableBytes = kTableHeaderBytes + kMaxElemSize * kTableEntryBytes;

size_t TableBytes(size_t elem_size) { return kTableHeaderBytes + elem_size * kTableEntryBytes; }

void PutU32(std::byte* p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::byte>(v >> (8 * i));
}
uint32_t GetU32(const std::byte* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v |= std::to_integer<uint32_t>(p[i]) << (8 * i);
  return v;
}

// Planes whose sampled order-0 entropy is above this are stored raw without trying zstd
// (bits/byte): zstd's Huffman stage cannot get such a plane under max_ratio_kept (0.97 x 8 =
// 7.76 bits; the margin covers sampling error), and mantissa bytes have no matches for its LZ
// stage either. Saves about 10% of encode time on floats.
inline constexpr double kSkipZstdBitsPerByte = 7.9;
inline constexpr size_t kEntropySampleBytes = 64 << 10;
inline constexpr size_t kEntropySampleBlock = 4 << 10;  // contiguous bytes per sample block

// Planes are compressed at this zstd level with Huffman-coded literals, whatever the caller's
// zstd_level (which is for whole-chunk frames): byte planes have few and short matches, which
// cost more than they save. The exponent plane of 1 MiB of fp32 N(0, 0.02) (order-0 entropy
// 2.68 bits/byte) keeps 386 KB at level 1 (330 MB/s), 359 KB here (980 MB/s, and decodes 1.8x
// faster), 356 KB at level 19 (3 MB/s). The fast search still finds long runs (zero padding).
inline constexpr int kPlaneZstdLevel = -200;

// ---- helpers ------------------------------------------------------------------------------------

// Order-0 entropy of `data` in bits/byte, from up to kEntropySampleBytes taken as blocks spread
// evenly over it (a prefix alone would misjudge a plane whose start differs from the rest).
double SampledEntropyBitsPerByte(std::span<const std::byte> data) {
  std::array<std::array<uint32_t, 256>, 4> counts{};  // 4 tables: no store-to-load stalls
  const size_t blocks =
      data.size() <= kEntropySampleBytes ? 1 : kEntropySampleBytes / kEntropySampleBlock;
  const size_t block = blocks == 1 ? data.size() : kEntropySampleBlock;
  const size_t stride = blocks == 1 ? 0 : (data.size() - block) / (blocks - 1);
  for (size_t b = 0; b < blocks; ++b) {
    const std::byte* p = data.data() + b * stride;
    size_t i = 0;
    for (; i + 4 <= block; i += 4) {
      for (size_t t = 0; t < 4; ++t) ++counts[t][std::to_integer<uint8_t>(p[i + t])];
    }
    for (; i < block; ++i) ++counts[0][std::to_integer<uint8_t>(p[i])];
  }
  double bits = 0;
  const double inv = 1.0 / static_cast<double>(std::max<size_t>(1, blocks * block));
  for (size_t v = 0; v < 256; ++v) {
    uint32_t c = counts[0][v] + counts[1][v] + counts[2][v] + counts[3][v];
    if (c != 0) bits -= c * inv * std::log2(c * inv);
  }
  return bits;
}

// A growable byte buffer that never zero-fills (std::vector would, on every size increase).
class Scratch {
 public:
  std::byte* Reserve(size_t bytes) {
    if (bytes > capacity_) {
      data_ = std::make_unique_for_overwrite<std::byte[]>(bytes);
      capacity_ = bytes;
    }
    return data_.get();
  }

 private:
  std::unique_ptr<std::byte[]> data_;
  size_t capacity_ = 0;
};

// Most stored bytes an encoding may keep for `raw_len` raw bytes.
uint64_t KeepLimit(size_t raw_len, double max_ratio_kept) {
  return static_cast<uint64_t>(std::floor(max_ratio_kept * static_cast<double>(raw_len)));
}

std::string Num(uint64_t v) { return std::to_string(v); }

bool AllZero(const std::byte* p, size_t n) {
  return std::all_of(p, p + n, [](std::byte b) { return b == std::byte{0}; });
}

Status Damaged(std::string_view what, const std::string& detail) {
  return Status::Corruption(std::string(what) + ": " + detail +
                            " (file damaged? run 'dsckpt verify')");
}

}  // namespace

// ---- names and checksums ------------------------------------------------------------------------

std::string_view CodecName(Codec codec) {
  switch (codec) {
    case Codec::kRaw: return "raw";
    case Codec::kZstd: return "zstd";
    case Codec::kByteGroupZstd: return "bytegroup+zstd";
  }
  return "unknown";
}

Result<Codec> CodecFromName(std::string_view name) {
  for (Codec c : {Codec::kRaw, Codec::kZstd, Codec::kByteGroupZstd}) {
    if (CodecName(c) == name) return c;
  }
  return Status::InvalidArgument("unknown codec '" + std::string(name) +
                                 "' (use raw, zstd or bytegroup+zstd)");
}

bool IsKnownCodec(uint8_t value) { return value <= static_cast<uint8_t>(Codec::kByteGroupZstd); }

uint64_t Xxh64(std::span<const std::byte> data) { return XXH64(data.data(), data.size(), 0); }

uint64_t StoredChecksum(Codec codec, std::span<const std::byte> stored) {
  XXH64_state_t state;
  XXH64_reset(&state, 0);
  const uint8_t codec_byte = static_cast<uint8_t>(codec);
  XXH64_update(&state, &codec_byte, 1);
  XXH64_update(&state, stored.data(), stored.size());
  return XXH64_digest(&state);
}

// ---- encoder ------------------------------------------------------------------------------------

namespace {
struct FreeCCtx {
  void operator()(ZSTD_CCtx* c) const { ZSTD_freeCCtx(c); }
};
struct FreeDCtx {
  void operator()(ZSTD_DCtx* d) const { ZSTD_freeDCtx(d); }
};
Status ZstdOutOfMemory() {
  return Status::IOError("cannot create a zstd context: out of memory", 12 /* ENOMEM */);
}
}  // namespace

struct ChunkEncoder::Impl {
  // Whole-chunk frames (codec zstd) at the caller's level, and planes at kPlaneZstdLevel.
  std::unique_ptr<ZSTD_CCtx, FreeCCtx> frame_cctx, plane_cctx;
  Scratch planes;  // (E, raw_len / E) bytes: the planes of the chunk being encoded

  // `ctx`, made on first use, set up for frames at `level`. Setting parameters costs nothing
  // until the next frame starts, which applies them.
  static Result<ZSTD_CCtx*> Context(std::unique_ptr<ZSTD_CCtx, FreeCCtx>& ctx, int level,
                                    bool huffman_literals) {
    if (ctx == nullptr) ctx.reset(ZSTD_createCCtx());
    if (ctx == nullptr) return ZstdOutOfMemory();
    size_t rc = ZSTD_CCtx_setParameter(ctx.get(), ZSTD_c_compressionLevel, level);
    if (ZSTD_isError(rc)) {
      return Status::InvalidArgument("zstd level " + std::to_string(level) +
                                     " is refused: " + ZSTD_getErrorName(rc));
    }
    ZSTD_CCtx_setParameter(ctx.get(), ZSTD_c_contentSizeFlag, 1);  // readers insist on it
    ZSTD_CCtx_setParameter(ctx.get(), ZSTD_c_checksumFlag, 0);     // xxh64 covers the bytes
    // Negative levels store literals raw unless told otherwise. Were this experimental
    // parameter ever refused, planes would only compress less (and be stored raw).
    if (huffman_literals) {
      ZSTD_CCtx_setParameter(ctx.get(), ZSTD_c_literalCompressionMode, ZSTD_ps_enable);
    }
    return ctx.get();
  }

  // One zstd frame of `src` in `dst`: its length in bytes, or 0 when it does not fit in dst
  // (dst is sized to the most the caller keeps, so zstd gives up as soon as it is over).
  static Result<size_t> Frame(ZSTD_CCtx* cctx, std::span<const std::byte> src,
                              std::span<std::byte> dst) {
    size_t len = ZSTD_compress2(cctx, dst.data(), dst.size(), src.data(), src.size());
    if (ZSTD_getErrorCode(len) == ZSTD_error_dstSize_tooSmall) return size_t{0};
    if (ZSTD_isError(len)) {
      return Status::IOError(std::string("zstd compression failed: ") + ZSTD_getErrorName(len));
    }
    return len;
  }

  // The plane table and the planes in `out`: the stored length, or 0 when it would exceed
  // `keep_limit` bytes.
  Result<size_t> EncodeByteGroup(std::span<const std::byte> raw, size_t e, double max_ratio_kept,
                                 uint64_t keep_limit, std::span<std::byte> out) {
    const size_t n = raw.size() / e;  // elements = bytes per plane
    std::byte* flat = planes.Reserve(raw.size());
    std::array<std::byte*, kMaxElemSize> p{};
    for (size_t k = 0; k < e; ++k) p[k] = flat + k * n;
    SplitPlanes(raw.data(), e, n, p.data());

    std::array<bool, kMaxElemSize> try_zstd{};
    for (size_t k = 0; k < e; ++k) {
      try_zstd[k] = SampledEntropyBitsPerByte({p[k], n}) <= kSkipZstdBitsPerByte;
    }
    size_t pos = TableBytes(e);
    if (pos > keep_limit || std::none_of(try_zstd.begin(), try_zstd.end(), std::identity())) {
      return size_t{0};  // noise: no plane is worth a try
    }
    DS_ASSIGN_OR_RETURN(ZSTD_CCtx * cctx, Context(plane_cctx, kPlaneZstdLevel, true));
    const uint64_t plane_limit = KeepLimit(n, max_ratio_kept);
    std::memset(out.data(), 0, pos);
    out[0] = static_cast<std::byte>(e);
    for (size_t k = 0; k < e; ++k) {
      std::span<const std::byte> plane(p[k], n);
      size_t len = 0;
      if (try_zstd[k]) {
        size_t cap = static_cast<size_t>(std::min<uint64_t>(out.size() - pos, plane_limit));
        DS_ASSIGN_OR_RETURN(len, Frame(cctx, plane, out.subspan(pos, cap)));
      }
      std::byte* entry = out.data() + kTableHeaderBytes + k * kTableEntryBytes;
      entry[0] = static_cast<std::byte>(len != 0 ? 1 : 0);
      if (len == 0) {
        std::memcpy(out.data() + pos, plane.data(), n);
        len = n;
      }
      PutU32(entry + 4, static_cast<uint32_t>(len));
      pos += len;
      if (pos > keep_limit) return size_t{0};
    }
    return pos;
  }
};

ChunkEncoder::ChunkEncoder() : impl_(std::make_unique<Impl>()) {}
ChunkEncoder::~ChunkEncoder() = default;

size_t ChunkEncoder::MaxStoredLen(size_t raw_len) {
  // No encoding keeps more than raw_len bytes (max_ratio_kept <= 1), zstd gets room for no more
  // than it may keep, and plane k (at most n = raw_len / E bytes) starts at or before
  // table + k * n: no write goes past table + raw_len.
  return raw_len + kMaxTableBytes;
}

Result<EncodedChunk> ChunkEncoder::Encode(std::span<const std::byte> raw, size_t elem_size,
                                          const EncodeOptions& options, std::span<std::byte> out) {
  if (raw.size() > kMaxChunkRawBytes) {
    return Status::InvalidArgument("a chunk of " + Num(raw.size()) +
                                   " bytes is over the 256 MiB limit readers accept; split it");
  }
  if (elem_size == 0 || elem_size > kMaxElemSize) {
    return Status::InvalidArgument("element size " + Num(elem_size) + " is not 1..8 bytes");
  }
  if (!(options.max_ratio_kept > 0 && options.max_ratio_kept <= 1)) {
    return Status::InvalidArgument("max_ratio_kept must be in (0, 1], not " +
                                   std::to_string(options.max_ratio_kept));
  }
  if (out.size() < MaxStoredLen(raw.size())) {
    return Status::InvalidArgument("output buffer of " + Num(out.size()) +
                                   " bytes is smaller than MaxStoredLen(" + Num(raw.size()) + ")");
  }
  Codec codec = options.codec;
  if (codec == Codec::kByteGroupZstd && (elem_size == 1 || raw.size() % elem_size != 0)) {
    codec = Codec::kZstd;
  }
  const uint64_t keep_limit = KeepLimit(raw.size(), options.max_ratio_kept);
  size_t stored = 0;  // 0: store raw
  if (codec != Codec::kRaw && !raw.empty()) {
    if (codec == Codec::kZstd) {
      DS_ASSIGN_OR_RETURN(ZSTD_CCtx * cctx,
                          Impl::Context(impl_->frame_cctx, options.zstd_level, false));
      size_t cap = static_cast<size_t>(std::min<uint64_t>(out.size(), keep_limit));
      DS_ASSIGN_OR_RETURN(stored, Impl::Frame(cctx, raw, out.first(cap)));
    } else {
      DS_ASSIGN_OR_RETURN(
          stored, impl_->EncodeByteGroup(raw, elem_size, options.max_ratio_kept, keep_limit, out));
    }
  }
  if (stored == 0) {
    codec = Codec::kRaw;
    if (!raw.empty()) std::memcpy(out.data(), raw.data(), raw.size());
    stored = raw.size();
  }
  return EncodedChunk{.codec = codec,
                      .raw_len = raw.size(),
                      .raw_xxh64 = Xxh64(raw),
                      .stored_xxh64 = StoredChecksum(codec, out.first(stored)),
                      .stored_len = stored};
}

// ---- decoder ------------------------------------------------------------------------------------

struct ChunkDecoder::Impl {
  std::unique_ptr<ZSTD_DCtx, FreeDCtx> dctx;
  Scratch planes;  // (E, raw_len / E) bytes: the zstd planes of the chunk being decoded

  // Decodes `src`, which must be exactly one zstd frame recording dst.size() as its content
  // size, into dst. `where` prefixes details ("plane 2: ").
  Status Frame(std::string_view what, const std::string& where, std::span<const std::byte> src,
               std::span<std::byte> dst) {
    if (dctx == nullptr) {
      dctx.reset(ZSTD_createDCtx());
      if (dctx == nullptr) return ZstdOutOfMemory();
    }
    if (src.size() < 4 || GetU32(src.data()) != ZSTD_MAGICNUMBER) {
      return Damaged(what, where + "stored bytes do not start with a zstd frame");
    }
    const uint64_t content = ZSTD_getFrameContentSize(src.data(), src.size());
    if (content == ZSTD_CONTENTSIZE_ERROR) return Damaged(what, where + "zstd frame header is bad");
    if (content == ZSTD_CONTENTSIZE_UNKNOWN) {
      return Damaged(what, where + "zstd frame does not record its content size");
    }
    if (content != dst.size()) {
      return Damaged(what, where + "zstd frame holds " + Num(content) + " bytes but " +
                               Num(dst.size()) + " are expected");
    }
    const size_t frame = ZSTD_findFrameCompressedSize(src.data(), src.size());
    if (ZSTD_isError(frame)) {
      return Damaged(what, where + "zstd frame is cut short (" + ZSTD_getErrorName(frame) + ")");
    }
    if (frame != src.size()) {
      return Damaged(what, where + Num(src.size() - frame) + " bytes follow the zstd frame");
    }
    size_t got = ZSTD_decompressDCtx(dctx.get(), dst.data(), dst.size(), src.data(), src.size());
    if (ZSTD_isError(got)) {
      return Damaged(what, where + "zstd frame does not decode (" + ZSTD_getErrorName(got) + ")");
    }
    if (got != dst.size()) {
      return Damaged(what, where + "zstd frame decodes to " + Num(got) + " bytes but " +
                               Num(dst.size()) + " are expected");
    }
    return Status::OK();
  }

  Status DecodeByteGroup(const ChunkDescriptor& desc, std::span<const std::byte> stored,
                         std::span<std::byte> out, std::string_view what) {
    const size_t e = stored.empty() ? 0 : std::to_integer<size_t>(stored[0]);
    if (e != desc.elem_size) {
      return Damaged(what, "plane table says " + Num(e) + "-byte elements but the manifest says " +
                               Num(desc.elem_size));
    }
    if (e == 0 || e > kMaxElemSize || desc.raw_len % e != 0) {
      return Damaged(what, "raw length " + Num(desc.raw_len) + " is not a whole number of " +
                               Num(e) + "-byte elements");
    }
    const size_t table = TableBytes(e);
    if (stored.size() < table || !AllZero(stored.data() + 1, 3)) {
      return Damaged(what, "plane table header is cut short or has nonzero reserved bytes");
    }
    std::array<uint32_t, kMaxElemSize> len{};  // stored bytes of each plane
    uint64_t total = table;
    for (size_t k = 0; k < e; ++k) {
      const std::byte* entry = stored.data() + kTableHeaderBytes + k * kTableEntryBytes;
      if (std::to_integer<uint8_t>(entry[0]) > 1 || !AllZero(entry + 1, 3)) {
        return Damaged(what, "plane table entry " + Num(k) + " has plane codec " +
                                 Num(std::to_integer<uint8_t>(entry[0])) +
                                 " (0 raw, 1 zstd) or nonzero reserved bytes");
      }
      len[k] = GetU32(entry + 4);
      total += len[k];
    }
    if (total != stored.size()) {
      return Damaged(what, "plane table lengths add up to " + Num(total) +
                               " bytes (table included) but the chunk stores " +
                               Num(stored.size()));
    }
    const size_t n = desc.raw_len / e;  // bytes per plane
    std::byte* flat = planes.Reserve(desc.raw_len);
    std::array<const std::byte*, kMaxElemSize> p{};
    for (size_t k = 0, pos = table; k < e; pos += len[k], ++k) {
      std::span<const std::byte> src = stored.subspan(pos, len[k]);
      if (stored[kTableHeaderBytes + k * kTableEntryBytes] == std::byte{0}) {
        if (src.size() != n) {
          return Damaged(what, "plane " + Num(k) + " is stored raw in " + Num(src.size()) +
                                   " bytes but holds " + Num(n));
        }
        p[k] = src.data();  // joined straight from the stored bytes
      } else {
        DS_RETURN_IF_ERROR(Frame(what, "plane " + Num(k) + ": ", src, {flat + k * n, n}));
        p[k] = flat + k * n;
      }
    }
    JoinPlanes(p.data(), e, n, out.data());
    return Status::OK();
  }
};

ChunkDecoder::ChunkDecoder() : impl_(std::make_unique<Impl>()) {}
ChunkDecoder::~ChunkDecoder() = default;

Status ChunkDecoder::Decode(const ChunkDescriptor& desc, std::span<const std::byte> stored,
                            std::span<std::byte> out, std::string_view what) {
  // step 1: sizes and the codec, from the manifest alone
  if (stored.size() != desc.stored_len) {
    return Damaged(what, "read " + Num(stored.size()) + " stored bytes but the manifest says " +
                             Num(desc.stored_len));
  }
  if (desc.raw_len > kMaxChunkRawBytes) {
    return Damaged(
        what, "manifest claims " + Num(desc.raw_len) + " raw bytes, over the 256 MiB chunk limit");
  }
  if (out.size() != desc.raw_len) {
    return Damaged(what, "manifest says " + Num(desc.raw_len) + " raw bytes but the tensor needs " +
                             Num(out.size()));
  }
  const uint8_t codec_byte = static_cast<uint8_t>(desc.codec);
  if (!IsKnownCodec(codec_byte)) {
    return Status::Corruption(std::string(what) + ": unknown codec " + Num(codec_byte) +
                              " (written by a newer dstrain? upgrade; else run 'dsckpt verify')");
  }
  // step 2: every stored byte is trusted only after this
  if (StoredChecksum(desc.codec, stored) != desc.stored_xxh64) {
    return Damaged(what, "stored checksum mismatch");
  }
  // step 3: decode
  switch (desc.codec) {
    case Codec::kRaw:
      if (stored.size() != out.size()) {
        return Damaged(what, "raw chunk stores " + Num(stored.size()) +
                                 " bytes but the manifest says " + Num(desc.raw_len));
      }
      if (!out.empty()) std::memcpy(out.data(), stored.data(), out.size());
      break;
    case Codec::kZstd: DS_RETURN_IF_ERROR(impl_->Frame(what, "", stored, out)); break;
    case Codec::kByteGroupZstd:
      DS_RETURN_IF_ERROR(impl_->DecodeByteGroup(desc, stored, out, what));
      break;
  }
  // step 4: the bytes handed back are the bytes that were written
  if (Xxh64(out) != desc.raw_xxh64) return Damaged(what, "raw checksum mismatch after decoding");
  return Status::OK();
}

}  // namespace ds::fmt
