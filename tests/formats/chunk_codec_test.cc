// Chunk codecs: every codec round-trips every element size and data shape; bytegroup+zstd pays
// off on float state and steps aside for noise; damage of every kind is found and named; the
// fast byte-group paths equal a plain loop.
#include "formats/chunk_codec.h"

#include <zstd.h>

#include <cmath>
#include <cstring>
#include <random>

#include "testing/matchers.h"

namespace ds::fmt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;

constexpr std::string_view kWhat = "chunk 17 of rank-00003.dss";
constexpr uint64_t kSeed = 20240601;

using Bytes = std::vector<std::byte>;

// ---- data -----------------------------------------------------------------------------------

Bytes RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = static_cast<std::byte>(rng());
  return b;
}

uint16_t ToBf16(float f) {  // round to nearest even, as torch does
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return static_cast<uint16_t>((u + 0x7fff + ((u >> 16) & 1)) >> 16);
}

// n bytes of little-endian floats ~ N(0, sigma): bf16 for 2-byte elements, fp64 for 8, fp32
// otherwise (n need not be a multiple of the element).
Bytes NormalFloats(size_t n, size_t elem_size, double sigma, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> dist(0.0, sigma);
  Bytes b(n);
  for (size_t i = 0; i < n;) {
    double v = dist(rng);
    std::byte e[8];
    if (elem_size == 2) {
      uint16_t h = ToBf16(static_cast<float>(v));
      std::memcpy(e, &h, 2);
    } else if (elem_size == 8) {
      std::memcpy(e, &v, 8);
    } else {
      float f = static_cast<float>(v);
      std::memcpy(e, &f, 4);
    }
    size_t width = elem_size == 2 ? 2 : elem_size == 8 ? 8 : 4;
    for (size_t k = 0; k < width && i < n; ++k) b[i++] = e[k];
  }
  return b;
}

ChunkDescriptor Describe(const EncodedChunk& c, size_t elem_size) {
  return {.codec = c.codec,
          .raw_len = c.raw_len,
          .stored_len = c.stored_len,
          .raw_xxh64 = c.raw_xxh64,
          .stored_xxh64 = c.stored_xxh64,
          .elem_size = static_cast<uint8_t>(elem_size)};
}

// One encoded chunk: its stored bytes and descriptor.
struct Chunk {
  Bytes stored;
  ChunkDescriptor desc;
};

Chunk EncodeOrDie(const Bytes& raw, size_t elem_size, EncodeOptions options) {
  ChunkEncoder enc;
  Bytes out(ChunkEncoder::MaxStoredLen(raw.size()));
  Result<EncodedChunk> c = enc.Encode(raw, elem_size, options, out);
  EXPECT_TRUE(c.ok()) << c.status().ToString();
  if (!c.ok()) return {};
  out.resize(c->stored_len);
  return {out, Describe(*c, elem_size)};
}

Status DecodeInto(const Chunk& c, Bytes* out) {
  ChunkDecoder dec;
  out->assign(c.desc.raw_len, std::byte{0});
  return dec.Decode(c.desc, c.stored, *out, kWhat);
}

double Ratio(const Chunk& c) {
  return static_cast<double>(c.desc.raw_len) / static_cast<double>(c.desc.stored_len);
}

// ---- names --------------------------------------------------------------------------------------

TEST(ChunkCodecNames, RoundTripAndRefuseUnknown) {
  for (Codec c : {Codec::kRaw, Codec::kZstd, Codec::kByteGroupZstd}) {
    DS_ASSERT_OK_AND_ASSIGN(Codec back, CodecFromName(CodecName(c)));
    EXPECT_EQ(back, c);
    EXPECT_TRUE(IsKnownCodec(static_cast<uint8_t>(c)));
  }
  EXPECT_EQ(CodecName(Codec::kByteGroupZstd), "bytegroup+zstd");
  EXPECT_FALSE(IsKnownCodec(3));
  EXPECT_THAT(CodecFromName("lz4"),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("unknown codec 'lz4'")));
}

TEST(ChunkCodecChecksums, StoredChecksumCoversTheCodecByte) {
  Bytes data = RandomBytes(1000, kSeed);
  EXPECT_EQ(Xxh64({}), 0xef46db3751d8e999u);  // the reference vectors of xxh64, seed 0
  const char abc[] = "abc";
  EXPECT_EQ(Xxh64(std::as_bytes(std::span(abc, 3))), 0x44bc2cf5ad770999u);
  EXPECT_NE(StoredChecksum(Codec::kRaw, data), StoredChecksum(Codec::kZstd, data));
  Bytes with_byte = {std::byte{1}};
  with_byte.insert(with_byte.end(), data.begin(), data.end());
  EXPECT_EQ(StoredChecksum(Codec::kZstd, data), Xxh64(with_byte));
}

// ---- round trips ----------------------------------------------------------------------------

TEST(ChunkCodecRoundTrip, EveryCodecElementSizeLengthAndData) {
  ChunkEncoder enc;  // one of each for the whole test: contexts and scratch are reused
  ChunkDecoder dec;
  const size_t kSizes[] = {0, 1, 7, 4095, 4096, 4096 + 8, (3 << 20) + 24};
  int n = 0;
  for (Codec codec : {Codec::kRaw, Codec::kZstd, Codec::kByteGroupZstd}) {
    for (size_t e : {1, 2, 4, 8}) {
      for (size_t size : kSizes) {
        for (const char* shape : {"random", "constant", "float"}) {
          SCOPED_TRACE(std::string(CodecName(codec)) + " elem " + std::to_string(e) + " size " +
                       std::to_string(size) + " " + shape + " seed " + std::to_string(kSeed));
          Bytes raw = std::string_view(shape) == "random"  ? RandomBytes(size, kSeed + n)
                      : std::string_view(shape) == "float" ? NormalFloats(size, e, 0.02, kSeed + n)
                                                           : Bytes(size, std::byte{0x3c});
          ++n;
          Bytes out(ChunkEncoder::MaxStoredLen(size));
          DS_ASSERT_OK_AND_ASSIGN(EncodedChunk c, enc.Encode(raw, e, {.codec = codec}, out));
          EXPECT_EQ(c.raw_len, size);
          EXPECT_LE(c.stored_len, size);  // compression that saves nothing is stored raw
          EXPECT_EQ(c.raw_xxh64, Xxh64(raw));
          std::span<const std::byte> stored(out.data(), c.stored_len);
          EXPECT_EQ(c.stored_xxh64, StoredChecksum(c.codec, stored));
          if (codec == Codec::kRaw || std::string_view(shape) == "random" || size < 64) {
            EXPECT_EQ(c.codec, Codec::kRaw);
          } else if (std::string_view(shape) == "constant") {
            Codec want = codec == Codec::kByteGroupZstd && e > 1 && size % e == 0
                             ? Codec::kByteGroupZstd
                             : Codec::kZstd;
            EXPECT_EQ(c.codec, want);
          }
          Bytes back(size, std::byte{0x55});
          DS_ASSERT_OK(dec.Decode(Describe(c, e), stored, back, kWhat));
          ASSERT_TRUE(back == raw);
        }
      }
    }
  }
}

TEST(ChunkCodecRoundTrip, ByteGroupFallsBackToZstdWhenElementsDoNotFit) {
  Bytes raw(4096 + 2, std::byte{7});
  EXPECT_EQ(EncodeOrDie(raw, 4, {}).desc.codec, Codec::kZstd);  // not a multiple of 4
  EXPECT_EQ(EncodeOrDie(raw, 1, {}).desc.codec, Codec::kZstd);  // nothing to group
  EXPECT_EQ(EncodeOrDie(raw, 2, {}).desc.codec, Codec::kByteGroupZstd);
}

// ---- compression pays off, or steps aside -------------------------------------------------------

TEST(ChunkCodecRatio, ByteGroupBeatsPlainZstdOnFloatState) {
  for (size_t e : {2, 4}) {  // bf16, fp32
    SCOPED_TRACE("elem " + std::to_string(e));
    Bytes raw = NormalFloats(4 << 20, e, 0.02, kSeed);
    Chunk grouped = EncodeOrDie(raw, e, {.codec = Codec::kByteGroupZstd});
    Chunk plain = EncodeOrDie(raw, e, {.codec = Codec::kZstd});
    ASSERT_EQ(grouped.desc.codec, Codec::kByteGroupZstd);
    // fp32: about 1.17x against 1.0 (plain zstd saves under 3% and is stored raw);
    // bf16: about 1.45x against 1.25x.
    EXPECT_GE(Ratio(grouped), 1.10 * Ratio(plain));
    EXPECT_GE(Ratio(grouped), 1.12);
    Bytes back;
    DS_ASSERT_OK(DecodeInto(grouped, &back));
    EXPECT_TRUE(back == raw);
  }
}

TEST(ChunkCodecRatio, RandomBytesAreStoredRaw) {
  Bytes raw = RandomBytes(1 << 20, kSeed);
  for (Codec codec : {Codec::kZstd, Codec::kByteGroupZstd}) {
    Chunk c = EncodeOrDie(raw, 4, {.codec = codec});
    EXPECT_EQ(c.desc.codec, Codec::kRaw);
    EXPECT_EQ(c.desc.stored_len, raw.size());
  }
}

TEST(ChunkCodecRatio, MaxRatioKeptDecidesWhatIsWorthKeeping) {
  Bytes raw = NormalFloats(1 << 20, 4, 0.02, kSeed);  // bytegroup keeps about 0.84 of it
  EXPECT_EQ(EncodeOrDie(raw, 4, {.max_ratio_kept = 0.8}).desc.codec, Codec::kRaw);
  EXPECT_EQ(EncodeOrDie(raw, 4, {.max_ratio_kept = 0.9}).desc.codec, Codec::kByteGroupZstd);
}

TEST(ChunkCodecEncode, RefusesBadArguments) {
  ChunkEncoder enc;
  Bytes raw(100), out(ChunkEncoder::MaxStoredLen(100));
  EXPECT_THAT(enc.Encode(raw, 4, {}, std::span(out).first(50)),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("smaller than MaxStoredLen(100)")));
  EXPECT_THAT(enc.Encode(raw, 0, {}, out),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("element size 0 is not 1..8")));
  EXPECT_THAT(
      enc.Encode(raw, 4, {.max_ratio_kept = 1.5}, out),
      StatusIs(StatusCode::kInvalidArgument, HasSubstr("max_ratio_kept must be in (0, 1]")));
}

// ---- damage is found and named --------------------------------------------------------------

// A fp32 chunk of 256 KiB whose exponent planes are zstd frames and mantissas raw.
class ChunkCodecDamage : public ::testing::Test {
 protected:
  void SetUp() override {
    raw_ = NormalFloats(256 << 10, 4, 0.02, kSeed);
    chunk_ = EncodeOrDie(raw_, 4, {.codec = Codec::kByteGroupZstd});
    ASSERT_EQ(chunk_.desc.codec, Codec::kByteGroupZstd);
  }
  // Decodes `c` into a buffer of desc.raw_len bytes (or `out_len`).
  Status Decode(const Chunk& c, size_t out_len = SIZE_MAX) {
    Bytes out(out_len == SIZE_MAX ? c.desc.raw_len : out_len);
    return dec_.Decode(c.desc, c.stored, out, kWhat);
  }
  // Makes the stored checksum fit the (crafted) stored bytes, so the parser sees them.
  static void FixChecksum(Chunk* c) {
    c->desc.stored_len = c->stored.size();
    c->desc.stored_xxh64 = StoredChecksum(c->desc.codec, c->stored);
  }
  static std::string Msg(const std::string& detail) {
    return std::string(kWhat) + ": " + detail + " (file damaged? run 'dsckpt verify')";
  }

  Bytes raw_;
  Chunk chunk_;
  ChunkDecoder dec_;
};

TEST_F(ChunkCodecDamage, BitFlipAnywhereFailsTheStoredChecksum) {
  Chunk zstd = EncodeOrDie(raw_, 4, {.codec = Codec::kZstd, .max_ratio_kept = 1.0});
  Chunk raw = EncodeOrDie(raw_, 4, {.codec = Codec::kRaw});
  for (const Chunk* base : {&chunk_, &zstd, &raw}) {
    const size_t n = base->stored.size();
    std::vector<size_t> positions = {0, 1, 4, 11, 36, n / 2, n - 1};
    std::mt19937_64 rng(kSeed);
    for (int i = 0; i < 24; ++i) positions.push_back(rng() % n);
    for (size_t pos : positions) {
      SCOPED_TRACE(std::string(CodecName(base->desc.codec)) + " byte " + std::to_string(pos));
      Chunk c = *base;
      c.stored[pos] ^= std::byte{1} << (pos % 8);
      EXPECT_THAT(Decode(c),
                  StatusIs(StatusCode::kCorruption, HasSubstr(Msg("stored checksum mismatch"))));
    }
  }
}

TEST_F(ChunkCodecDamage, TruncatedStoredBytes) {
  Chunk c = chunk_;
  c.stored.pop_back();
  const std::string n = std::to_string(c.stored.size());
  EXPECT_THAT(Decode(c),
              StatusIs(StatusCode::kCorruption,
                       HasSubstr(Msg("read " + n + " stored bytes but the manifest says " +
                                     std::to_string(c.stored.size() + 1)))));
  c.desc.stored_len = c.stored.size();  // the manifest agrees with the short file
  EXPECT_THAT(Decode(c),
              StatusIs(StatusCode::kCorruption, HasSubstr(Msg("stored checksum mismatch"))));
}

TEST_F(ChunkCodecDamage, WrongRawLengthInTheDescriptor) {
  Chunk c = chunk_;
  c.desc.raw_len += 4;
  const std::string n = std::to_string(raw_.size() / 4), m = std::to_string(raw_.size() / 4 + 1);
  // Plane 0 (mantissa bytes) is stored raw, so its length gives the lie first.
  EXPECT_THAT(Decode(c),
              StatusIs(StatusCode::kCorruption,
                       HasSubstr(Msg("plane 0 is stored raw in " + n + " bytes but holds " + m))));
  Chunk z = EncodeOrDie(raw_, 4, {.codec = Codec::kZstd, .max_ratio_kept = 1.0});
  ASSERT_EQ(z.desc.codec, Codec::kZstd);
  z.desc.raw_len -= 1;
  EXPECT_THAT(
      Decode(z),
      StatusIs(StatusCode::kCorruption,
               HasSubstr(Msg("zstd frame holds " + std::to_string(raw_.size()) + " bytes but " +
                             std::to_string(raw_.size() - 1) + " are expected"))));
  EXPECT_THAT(
      Decode(chunk_, raw_.size() + 1),
      StatusIs(StatusCode::kCorruption,
               HasSubstr(Msg("manifest says 262144 raw bytes but the tensor needs 262145"))));
}

TEST_F(ChunkCodecDamage, CodecRelabelledOrUnknown) {
  for (Codec other : {Codec::kRaw, Codec::kZstd}) {
    Chunk c = chunk_;
    c.desc.codec = other;
    EXPECT_THAT(Decode(c),
                StatusIs(StatusCode::kCorruption, HasSubstr(Msg("stored checksum mismatch"))));
  }
  Chunk c = chunk_;
  c.desc.codec = static_cast<Codec>(7);
  EXPECT_THAT(Decode(c), StatusIs(StatusCode::kCorruption,
                                  HasSubstr(std::string(kWhat) +
                                            ": unknown codec 7 (written by a newer "
                                            "dstrain? upgrade; else run 'dsckpt verify')")));
}

TEST_F(ChunkCodecDamage, RawLengthOverTheLimitIsRefusedBeforeAnything) {
  Chunk c = chunk_;
  c.desc.raw_len = kMaxChunkRawBytes + 1;
  EXPECT_THAT(Decode(c, 16), StatusIs(StatusCode::kCorruption,
                                      HasSubstr(Msg("manifest claims 268435457 raw bytes, over the "
                                                    "256 MiB chunk limit"))));
}

TEST_F(ChunkCodecDamage, PlaneTableThatDoesNotAddUp) {
  Chunk c = chunk_;
  const size_t total = c.stored.size();
  c.stored[4 + 3 * 8 + 4] =
      static_cast<std::byte>(std::to_integer<int>(c.stored[4 + 3 * 8 + 4]) + 1);
  FixChecksum(&c);
  EXPECT_THAT(Decode(c),
              StatusIs(StatusCode::kCorruption,
                       HasSubstr(Msg("plane table lengths add up to " + std::to_string(total + 1) +
                                     " bytes (table included) but the chunk stores " +
                                     std::to_string(total)))));
  Chunk e = chunk_;
  e.desc.elem_size = 2;
  EXPECT_THAT(Decode(e), StatusIs(StatusCode::kCorruption,
                                  HasSubstr(Msg("plane table says 4-byte elements but the manifest "
                                                "says 2"))));
  Chunk u = chunk_;
  u.stored[4 + 8] = std::byte{9};
  FixChecksum(&u);
  EXPECT_THAT(Decode(u),
              StatusIs(StatusCode::kCorruption,
                       HasSubstr(Msg("plane table entry 1 has plane codec 9 (0 raw, 1 zstd) or "
                                     "nonzero reserved bytes"))));
}

TEST_F(ChunkCodecDamage, ZstdFrameOfAnotherSizeOrWithTrailingBytes) {
  // A well-formed frame of 4 more bytes, under a checksum that matches it.
  Bytes longer = raw_;
  longer.resize(raw_.size() + 4, std::byte{0});
  Chunk c = EncodeOrDie(longer, 4, {.codec = Codec::kZstd, .max_ratio_kept = 1.0});
  ASSERT_EQ(c.desc.codec, Codec::kZstd);
  c.desc.raw_len = raw_.size();
  FixChecksum(&c);
  EXPECT_THAT(Decode(c), StatusIs(StatusCode::kCorruption,
                                  HasSubstr(Msg("zstd frame holds 262148 bytes but 262144 are "
                                                "expected"))));

  Chunk t = EncodeOrDie(raw_, 4, {.codec = Codec::kZstd, .max_ratio_kept = 1.0});
  t.stored.resize(t.stored.size() + 3, std::byte{0});
  FixChecksum(&t);
  EXPECT_THAT(Decode(t),
              StatusIs(StatusCode::kCorruption, HasSubstr(Msg("3 bytes follow the zstd frame"))));

  // A frame without its content size (another writer's), which could claim any size.
  Chunk u = t;
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  ZSTD_CCtx_setParameter(cctx, ZSTD_c_contentSizeFlag, 0);
  u.stored.resize(ZSTD_compressBound(raw_.size()));
  size_t len = ZSTD_compress2(cctx, u.stored.data(), u.stored.size(), raw_.data(), raw_.size());
  ZSTD_freeCCtx(cctx);
  ASSERT_FALSE(ZSTD_isError(len));
  u.stored.resize(len);
  FixChecksum(&u);
  EXPECT_THAT(Decode(u), StatusIs(StatusCode::kCorruption,
                                  HasSubstr(Msg("zstd frame does not record its content size"))));
}

TEST_F(ChunkCodecDamage, PlaneFrameOfAnotherSize) {
  // Plane 3 (the exponent bytes) replaced by a well-formed frame of 4 more bytes; the plane
  // table and the stored checksum agree with it, so only the frame's content size is wrong.
  const size_t n = raw_.size() / 4, table = 4 + 4 * 8;
  uint32_t len[4];
  for (size_t k = 0; k < 4; ++k) std::memcpy(&len[k], chunk_.stored.data() + 4 + 8 * k + 4, 4);
  ASSERT_EQ(chunk_.stored[4 + 3 * 8], std::byte{1});  // a zstd plane
  Bytes plane(n + 4, std::byte{0x3c});
  Chunk frame = EncodeOrDie(plane, 1, {.codec = Codec::kZstd});
  ASSERT_EQ(frame.desc.codec, Codec::kZstd);
  Chunk c = chunk_;
  c.stored.resize(table + len[0] + len[1] + len[2]);
  c.stored.insert(c.stored.end(), frame.stored.begin(), frame.stored.end());
  const uint32_t new_len = static_cast<uint32_t>(frame.stored.size());
  std::memcpy(c.stored.data() + 4 + 3 * 8 + 4, &new_len, 4);  // little-endian host
  FixChecksum(&c);
  EXPECT_THAT(Decode(c),
              StatusIs(StatusCode::kCorruption,
                       HasSubstr(Msg("plane 3: zstd frame holds " + std::to_string(n + 4) +
                                     " bytes but " + std::to_string(n) + " are expected"))));
}

TEST_F(ChunkCodecDamage, RawChecksumMismatchAfterDecoding) {
  Chunk c = chunk_;
  c.desc.raw_xxh64 ^= 1;
  EXPECT_THAT(Decode(c), StatusIs(StatusCode::kCorruption,
                                  HasSubstr(Msg("raw checksum mismatch after decoding"))));
}

// ---- byte-group transform -----------------------------------------------------------------------

// The plain reference: plane k holds byte k of each element.
Bytes SplitReference(const Bytes& raw, size_t e) {
  const size_t n = raw.size() / e;
  Bytes planes(n * e);
  for (size_t i = 0; i < n; ++i) {
    for (size_t k = 0; k < e; ++k) planes[k * n + i] = raw[i * e + k];
  }
  return planes;
}

TEST(ByteGroup, FastPathsEqualThePlainLoop) {
  const size_t kElements[] = {0, 1, 3, 15, 16, 17, 31, 32, 33, 100, 1000, 4099, (64 << 10) + 5};
  for (size_t e = 1; e <= 8; ++e) {
    for (size_t n : kElements) {
      SCOPED_TRACE("elem " + std::to_string(e) + " elements " + std::to_string(n));
      Bytes raw = RandomBytes(n * e, kSeed + n * 8 + e);
      Bytes planes(n * e, std::byte{0xee});
      ByteGroupSplit(raw, e, planes);
      ASSERT_TRUE(planes == SplitReference(raw, e));
      // Join is checked against the reference on independent random planes.
      Bytes other = RandomBytes(n * e, kSeed + 1);
      Bytes joined(n * e, std::byte{0xee});
      ByteGroupJoin(SplitReference(other, e), e, joined);
      ASSERT_TRUE(joined == other);
    }
  }
}

TEST(ByteGroup, PlaneZeroIsTheLeastSignificantByte) {
  const uint32_t values[] = {0x44332211, 0x88776655};
  Bytes raw(8);
  std::memcpy(raw.data(), values, 8);
  Bytes planes(8);
  ByteGroupSplit(raw, 4, planes);
  EXPECT_EQ(planes[0], std::byte{0x11});
  EXPECT_EQ(planes[1], std::byte{0x55});
  EXPECT_EQ(planes[6], std::byte{0x44});
  EXPECT_EQ(planes[7], std::byte{0x88});
}

}  // namespace
}  // namespace ds::fmt
