// The manifest record (docs/format.md, 4.3): a round trip keeps every field, the bytes are the
// ones the spec lists (checked against a second encoder written from the spec), and each kind of
// damage is refused with a message naming the field.
#include <functional>

#include "formats/chunk_codec.h"
#include "formats/manifest.h"
#include "testing/matchers.h"

namespace ds::fmt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::HasSubstr;

std::span<const std::byte> Bytes(const std::string& s) {
  return std::as_bytes(std::span(s.data(), s.size()));
}

// Every field set, none to its default, integers near their limits.
Manifest EveryField() {
  Manifest m;
  m.info.format_version = 2;
  m.info.tag = "step-00000042";
  m.info.step = -3;  // i64 as two's complement
  m.info.world_size = 3;
  m.info.zero_stage = 3;
  m.info.tp_degree = 4;
  m.info.pp_degree = 5;
  m.info.partition_alignment = 64;
  m.info.created_micros = INT64_MIN;
  m.info.writer_version = "dstrain 9.9";
  m.info.config_json = R"({"a": 1})";
  m.info.metrics_json = R"({"loss": 1.5})";
  m.tensors = {{"w", DType::kBF16, {2, 3}}, {"s", DType::kI64, {}}};
  m.slices = {{1, 2, {1, 0}, {1, 3}, 1, 2, 1, 77},
              {0, 1, {}, {}, 0, UINT64_MAX, UINT64_MAX - 1, 5}};
  m.files = {{"rank-00002.dss", UINT64_MAX, 2}};
  m.chunks = {{0, 4096, 10, 20, Codec::kByteGroupZstd, 2, UINT64_MAX, 12345}};
  m.blobs = {{"rng/rank-00000", std::string("\0\xff", 2)}, {"", ""}};
  return m;
}

void ExpectSameFields(const Manifest& a, const Manifest& b) {
  EXPECT_EQ(a.info.format_version, b.info.format_version);
  EXPECT_EQ(a.info.tag, b.info.tag);
  EXPECT_EQ(a.info.step, b.info.step);
  EXPECT_EQ(a.info.world_size, b.info.world_size);
  EXPECT_EQ(a.info.zero_stage, b.info.zero_stage);
  EXPECT_EQ(a.info.tp_degree, b.info.tp_degree);
  EXPECT_EQ(a.info.pp_degree, b.info.pp_degree);
  EXPECT_EQ(a.info.partition_alignment, b.info.partition_alignment);
  EXPECT_EQ(a.info.created_micros, b.info.created_micros);
  EXPECT_EQ(a.info.writer_version, b.info.writer_version);
  EXPECT_EQ(a.info.config_json, b.info.config_json);
  EXPECT_EQ(a.info.metrics_json, b.info.metrics_json);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (size_t i = 0; i < a.tensors.size(); ++i) {
    EXPECT_EQ(a.tensors[i].name, b.tensors[i].name);
    EXPECT_EQ(a.tensors[i].dtype, b.tensors[i].dtype);
    EXPECT_EQ(a.tensors[i].shape, b.tensors[i].shape);
  }
  ASSERT_EQ(a.slices.size(), b.slices.size());
  for (size_t i = 0; i < a.slices.size(); ++i) {
    const SliceMeta &x = a.slices[i], &y = b.slices[i];
    EXPECT_EQ(x.tensor, y.tensor);
    EXPECT_EQ(x.rank, y.rank);
    EXPECT_EQ(x.box_offset, y.box_offset);
    EXPECT_EQ(x.box_length, y.box_length);
    EXPECT_EQ(x.flat_begin, y.flat_begin);
    EXPECT_EQ(x.flat_end, y.flat_end);
    EXPECT_EQ(x.first_chunk, y.first_chunk);
    EXPECT_EQ(x.offset_in_chunk, y.offset_in_chunk);
  }
  ASSERT_EQ(a.files.size(), b.files.size());
  for (size_t i = 0; i < a.files.size(); ++i) {
    EXPECT_EQ(a.files[i].name, b.files[i].name);
    EXPECT_EQ(a.files[i].size, b.files[i].size);
    EXPECT_EQ(a.files[i].rank, b.files[i].rank);
  }
  ASSERT_EQ(a.chunks.size(), b.chunks.size());
  for (size_t i = 0; i < a.chunks.size(); ++i) {
    const ChunkMeta &x = a.chunks[i], &y = b.chunks[i];
    EXPECT_EQ(x.file, y.file);
    EXPECT_EQ(x.offset, y.offset);
    EXPECT_EQ(x.stored_len, y.stored_len);
    EXPECT_EQ(x.raw_len, y.raw_len);
    EXPECT_EQ(x.codec, y.codec);
    EXPECT_EQ(x.elem_size, y.elem_size);
    EXPECT_EQ(x.raw_xxh64, y.raw_xxh64);
    EXPECT_EQ(x.stored_xxh64, y.stored_xxh64);
  }
  ASSERT_EQ(a.blobs.size(), b.blobs.size());
  for (size_t i = 0; i < a.blobs.size(); ++i) {
    EXPECT_EQ(a.blobs[i].name, b.blobs[i].name);
    EXPECT_EQ(a.blobs[i].data, b.blobs[i].data);
  }
}

// A second encoder, written from docs/format.md 4.3 with raw u64 fields, so that a test can
// write what the real encoder never would (a count that lies, a dtype that does not exist).
struct RawRecord {
  uint64_t format_version = 2;
  std::string tag = "t";
  uint64_t step = 1, world_size = 1, zero_stage = 0, tp_degree = 1, pp_degree = 1;
  uint64_t partition_alignment = 1, created_micros = 0;
  std::string writer_version = "v", config_json = "{}", metrics_json = "{}";
  uint64_t tensor_count = 1;
  std::string tensor_name = "x", tensor_dtype = "float32";
  std::vector<uint64_t> shape = {2};
  uint64_t slice_count = 1;
  std::vector<uint64_t> slice = {0, 0};  // tensor, rank
  std::vector<uint64_t> box_offset = {0}, box_length = {2};
  std::vector<uint64_t> slice_tail = {0, 2, 0, 0};  // flat_begin, flat_end, first_chunk, offset
  uint64_t file_count = 1;
  std::string file_name = "rank-00000.dss";
  std::vector<uint64_t> file_tail = {4104, 0};  // size, rank
  uint64_t chunk_count = 1;
  std::vector<uint64_t> chunk = {0, 4096, 8, 8, 0, 4, 11, 12};  // file ... codec elem_size ...
  uint64_t blob_count = 1;
  std::string blob_name = "b";
  std::string blob_data = "d";
  uint64_t blob_data_length = 1;
  std::string trailing;

  std::string Encode() const {
    std::string b;
    auto u = [&](uint64_t v) {
      for (int i = 0; i < 8; ++i) b.push_back(static_cast<char>(v >> (8 * i)));
    };
    auto s = [&](const std::string& x) {
      u(x.size());
      b += x;
    };
    auto v = [&](const std::vector<uint64_t>& x) {
      u(x.size());
      for (uint64_t e : x) u(e);
    };
    u(format_version);
    s(tag);
    for (uint64_t x : {step, world_size, zero_stage, tp_degree, pp_degree, partition_alignment,
                       created_micros}) {
      u(x);
    }
    s(writer_version);
    s(config_json);
    s(metrics_json);
    u(tensor_count);
    s(tensor_name);
    s(tensor_dtype);
    v(shape);
    u(slice_count);
    for (uint64_t x : slice) u(x);
    v(box_offset);
    v(box_length);
    for (uint64_t x : slice_tail) u(x);
    u(file_count);
    s(file_name);
    for (uint64_t x : file_tail) u(x);
    u(chunk_count);
    for (uint64_t x : chunk) u(x);
    u(blob_count);
    s(blob_name);
    u(blob_data_length);
    b += blob_data;
    return b + trailing;
  }
};

TEST(ManifestRecordTest, RoundTripKeepsEveryField) {
  const Manifest m = EveryField();
  const std::string record = EncodeManifestRecord(m);
  DS_ASSERT_OK_AND_ASSIGN(Manifest back, DecodeManifestRecord(Bytes(record), "m.h5"));
  ExpectSameFields(m, back);
  EXPECT_TRUE(EncodeManifestRecord(back) == record);
  EXPECT_EQ(ManifestContentChecksum(m), Xxh64(Bytes(record)));
}

TEST(ManifestRecordTest, TheBytesAreTheSpecs) {
  Manifest m;
  m.info.tag = "t";
  m.info.step = 1;
  m.info.writer_version = "v";
  m.tensors = {{"x", DType::kF32, {2}}};
  m.slices = {{0, 0, {0}, {2}, 0, 2, 0, 0}};
  m.files = {{"rank-00000.dss", 4104, 0}};
  m.chunks = {{0, 4096, 8, 8, Codec::kRaw, 4, 11, 12}};
  m.blobs = {{"b", "d"}};
  DS_ASSERT_OK(ValidateManifest(m, "m"));
  EXPECT_TRUE(EncodeManifestRecord(m) == RawRecord().Encode());
  DS_ASSERT_OK_AND_ASSIGN(Manifest back, DecodeManifestRecord(Bytes(RawRecord().Encode()), "m"));
  ExpectSameFields(m, back);
}

struct Damage {
  const char* name;
  std::function<void(RawRecord&)> damage;
  const char* message;
};

TEST(ManifestRecordTest, EachDamageIsRefusedNamingTheField) {
  const std::vector<Damage> cases = {
      {"version past u32", [](RawRecord& r) { r.format_version = uint64_t{1} << 32; },
       "m.h5: the manifest record's format_version is 4294967296, more than 32 bits hold"},
      {"world size past u32", [](RawRecord& r) { r.world_size = UINT64_MAX; },
       "m.h5: the manifest record's world_size is 18446744073709551615, more than 32 bits hold"},
      {"too many tensors", [](RawRecord& r) { r.tensor_count = 1000; },
       "m.h5: the manifest record claims 1000 tensors but only 272 bytes are left (each takes at "
       "least 24)"},
      {"a count near 2^64", [](RawRecord& r) { r.slice_count = UINT64_MAX; },
       "m.h5: the manifest record claims 18446744073709551615 slices but only 224 bytes are left "
       "(each takes at least 64)"},
      {"unknown dtype", [](RawRecord& r) { r.tensor_dtype = "float128"; },
       "m.h5: the manifest record's tensors[0].dtype 'float128' is not a known dtype"},
      {"nine dims", [](RawRecord& r) { r.shape.assign(9, 1); },
       "m.h5: the manifest record's tensors[0].shape has 9 dimensions (at most 8)"},
      {"nine box dims", [](RawRecord& r) { r.box_offset.assign(9, 0); },
       "m.h5: the manifest record's slices[0].box_offset has 9 dimensions (at most 8)"},
      {"slice tensor past u32", [](RawRecord& r) { r.slice[0] = uint64_t{1} << 40; },
       "m.h5: the manifest record's slices[0].tensor is 1099511627776, more than 32 bits hold"},
      {"file rank past u32", [](RawRecord& r) { r.file_tail[1] = uint64_t{1} << 32; },
       "m.h5: the manifest record's files[0].rank is 4294967296, more than 32 bits hold"},
      {"unknown codec", [](RawRecord& r) { r.chunk[4] = 9; },
       "m.h5: the manifest record's chunks[0].codec 9 is not a known codec"},
      {"codec past u8", [](RawRecord& r) { r.chunk[4] = 256; },
       "m.h5: the manifest record's chunks[0].codec is 256, more than 8 bits hold"},
      {"element size past u8", [](RawRecord& r) { r.chunk[5] = 1000; },
       "m.h5: the manifest record's chunks[0].elem_size is 1000, more than 8 bits hold"},
      {"string longer than the record", [](RawRecord& r) { r.blob_data_length = UINT64_MAX; },
       "m.h5: the manifest record's blobs[0].data claims 18446744073709551615 bytes but only 1 "
       "are left"},
      {"string one byte long", [](RawRecord& r) { r.blob_data_length = 2; },
       "m.h5: the manifest record's blobs[0].data claims 2 bytes but only 1 are left"},
      {"trailing bytes", [](RawRecord& r) { r.trailing = "xyz"; },
       "m.h5: the manifest record has 3 bytes after its last blob"},
  };
  DS_ASSERT_OK(DecodeManifestRecord(Bytes(RawRecord().Encode()), "m.h5").status());
  for (const Damage& d : cases) {
    RawRecord r;
    d.damage(r);
    EXPECT_THAT(DecodeManifestRecord(Bytes(r.Encode()), "m.h5"),
                StatusIs(StatusCode::kCorruption, d.message))
        << d.name;
  }
}

// Every proper prefix of a record is refused (never read past its end), naming where it ends.
TEST(ManifestRecordTest, EveryTruncationIsRefused) {
  const std::string record = EncodeManifestRecord(EveryField());
  EXPECT_THAT(DecodeManifestRecord({}, "m.h5"),
              StatusIs(StatusCode::kCorruption,
                       "m.h5: the manifest record ends inside format_version (it has 0 bytes)"));
  EXPECT_THAT(DecodeManifestRecord(Bytes(record.substr(0, 12)), "m.h5"),
              StatusIs(StatusCode::kCorruption,
                       "m.h5: the manifest record ends inside tag (it has 12 bytes)"));
  for (size_t n = 0; n < record.size(); ++n) {
    // A copy of exactly n bytes, so that a read past the end is a sanitizer's error.
    std::vector<std::byte> prefix(reinterpret_cast<const std::byte*>(record.data()),
                                  reinterpret_cast<const std::byte*>(record.data()) + n);
    EXPECT_THAT(DecodeManifestRecord(prefix, "m.h5"),
                StatusIs(StatusCode::kCorruption, HasSubstr("m.h5: the manifest record")))
        << "prefix of " << n << " bytes";
  }
}

}  // namespace
}  // namespace ds::fmt
