// Shard files: header validation, chunk packing, and writer/reader round trips with damage.
#include "formats/shard_file.h"

#include <cstring>
#include <random>

#include "io/fault_env.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::fmt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(ShardHeaderTest, RoundTripAndNames) {
  std::vector<std::byte> buf(kShardHeaderBytes);
  EncodeShardHeader({kShardFormatVersion, 7, 1234567, "dstrain 0.1.0"}, buf);
  DS_ASSERT_OK_AND_ASSIGN(ShardHeader h, DecodeShardHeader(buf, "rank-00007.dss"));
  EXPECT_EQ(h.rank, 7u);
  EXPECT_EQ(h.created_micros, 1234567);
  EXPECT_EQ(h.writer_version, "dstrain 0.1.0");
  EXPECT_EQ(ShardFileName(3), "rank-00003.dss");
  EXPECT_EQ(ShardFileName(123456), "rank-123456.dss");
  uint32_t r = 0;
  EXPECT_TRUE(ParseShardFileName("rank-00042.dss", &r));
  EXPECT_EQ(r, 42u);
  EXPECT_FALSE(ParseShardFileName("rank-42.dss", &r));
  EXPECT_FALSE(ParseShardFileName("rank-0004x.dss", &r));
  EXPECT_FALSE(ParseShardFileName("../rank-00001.dss", &r));
}

TEST(ShardHeaderTest, DamageIsRefusedClearly) {
  std::vector<std::byte> buf(kShardHeaderBytes);
  EncodeShardHeader({kShardFormatVersion, 1, 0, "dstrain"}, buf);
  EXPECT_THAT(DecodeShardHeader(std::span(buf).first(100), "f.dss"),
              StatusIs(StatusCode::kCorruption, HasSubstr("f.dss: 100 bytes is too short")));
  auto bad = buf;
  bad[0] = std::byte{'X'};
  EXPECT_THAT(DecodeShardHeader(bad, "f.dss"),
              StatusIs(StatusCode::kCorruption, HasSubstr("not a dstrain shard file")));
  bad = buf;
  bad[8] = std::byte{9};  // format version 9
  EXPECT_THAT(DecodeShardHeader(bad, "f.dss"),
              StatusIs(StatusCode::kCorruption,
                       AllOf(HasSubstr("shard format version 9"), HasSubstr("reads 1 to 1"))));
  bad = buf;
  bad[100] = std::byte{1};
  EXPECT_THAT(DecodeShardHeader(bad, "f.dss"),
              StatusIs(StatusCode::kCorruption, HasSubstr("fails its checksum")));
}

TEST(PlanChunksTest, SmallPiecesPackLargeOnesStartFresh) {
  const uint64_t C = 100;
  std::vector<PieceSpec> pieces = {{30, 4}, {30, 4}, {0, 4}, {250, 4}, {10, 4}, {10, 2}, {95, 2}};
  std::vector<PiecePlacement> at;
  std::vector<ChunkPlan> plan = PlanChunks(pieces, C, &at);
  // chunk 0: p0 + p1 (60); p3 (250) starts fresh: chunks 1, 2 full, 3 holds 50 + p4 (10);
  // p5 has another element size: chunk 4; p6 does not fit beside it: chunk 5.
  ASSERT_EQ(plan.size(), 6u);
  EXPECT_EQ(plan[0].raw_len, 60u);
  EXPECT_EQ(plan[1].raw_len, 100u);
  EXPECT_EQ(plan[2].raw_len, 100u);
  EXPECT_EQ(plan[3].raw_len, 60u);
  EXPECT_EQ(plan[4].raw_len, 10u);
  EXPECT_EQ(plan[4].elem_size, 2);
  EXPECT_EQ(plan[5].raw_len, 95u);
  EXPECT_EQ(at[1].first_chunk, 0u);
  EXPECT_EQ(at[1].offset_in_chunk, 30u);
  EXPECT_EQ(at[2].first_chunk, 0u);  // empty piece: no space
  EXPECT_EQ(at[2].offset_in_chunk, 60u);
  EXPECT_EQ(at[3].first_chunk, 1u);
  EXPECT_EQ(at[3].offset_in_chunk, 0u);
  EXPECT_EQ(at[4].first_chunk, 3u);
  EXPECT_EQ(at[4].offset_in_chunk, 50u);
  // Every byte of every piece appears exactly once, in order.
  std::vector<uint64_t> seen(pieces.size(), 0);
  for (const ChunkPlan& c : plan) {
    uint64_t sum = 0;
    for (const PiecePart& p : c.parts) {
      EXPECT_EQ(p.begin, seen[p.piece]);
      seen[p.piece] = p.end;
      sum += p.end - p.begin;
      EXPECT_EQ(pieces[p.piece].elem_size, c.elem_size);
    }
    EXPECT_EQ(sum, c.raw_len);
    EXPECT_LE(c.raw_len, C);
  }
  for (size_t i = 0; i < pieces.size(); ++i) EXPECT_EQ(seen[i], pieces[i].nbytes);
}

// ---- writer and reader

struct Rig {
  std::unique_ptr<io::AsyncIo> aio;
  io::ThreadPool encoders{2};
  io::BufferPool staging{{.capacity_bytes = 64 << 20}};
  explicit Rig(const char* backend) {
    io::AsyncIoOptions o;
    o.backend = backend;
    auto r = io::OpenAsyncIo(o);
    if (r.ok()) aio = std::move(r).value();
  }
  ShardWriterOptions Options(Codec codec) {
    ShardWriterOptions o;
    o.encode.codec = codec;
    o.io = aio.get();
    o.encoders = &encoders;
    o.staging = &staging;
    o.preallocate_step = 1 << 20;
    return o;
  }
};

std::vector<std::byte> FloatLike(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> dist(0, 0.02f);
  std::vector<float> v(n / 4);
  for (float& x : v) x = dist(rng);
  std::vector<std::byte> out(n);
  std::memcpy(out.data(), v.data(), v.size() * 4);
  return out;
}

class ShardRoundTrip : public ::testing::TestWithParam<std::tuple<std::string, Codec>> {};

TEST_P(ShardRoundTrip, EveryChunkComesBackAndDamageIsNamed) {
  const auto& [where, codec] = GetParam();
  io::MemEnv mem;
  io::Env* env = where == "mem" ? static_cast<io::Env*>(&mem) : io::Env::Default();
  testing::TempDir dir(env);
  std::string why;
  Rig rig(where == "posix" && io::ProbeIoUring(&why) ? "uring" : "pwrite");
  ASSERT_NE(rig.aio, nullptr);
  const std::string path = dir.Join("rank-00002.dss");
  std::vector<std::vector<std::byte>> chunks;
  for (size_t n : {size_t{4096}, size_t{1} << 20, size_t{12345 * 4}, size_t{0}, size_t{3 << 20}}) {
    chunks.push_back(FloatLike(n, n));
  }
  DS_ASSERT_OK_AND_ASSIGN(auto writer, ShardWriter::Create(env, path, 2, rig.Options(codec)));
  for (const auto& c : chunks) writer->AddChunk(c, 4);
  DS_ASSERT_OK_AND_ASSIGN(ShardSummary sum, writer->Finish());
  ASSERT_EQ(sum.chunks.size(), chunks.size());
  EXPECT_EQ(sum.file_size % kChunkAlignment, 0u);
  // The writer's account of its time: writes from the first queued to the last completed.
  EXPECT_GT(sum.stats.first_write_micros, 0u);
  EXPECT_GE(sum.stats.last_write_micros, sum.stats.first_write_micros);
  DS_ASSERT_OK_AND_ASSIGN(io::FileInfo info, env->Stat(path));
  EXPECT_EQ(info.size, sum.file_size);

  DS_ASSERT_OK_AND_ASSIGN(auto reader, ShardReader::Open(env, path, 2));
  EXPECT_EQ(reader->header().rank, 2u);
  ChunkDecoder dec;
  for (size_t i = 0; i < chunks.size(); ++i) {
    std::vector<std::byte> out(sum.chunks[i].raw_len);
    DS_ASSERT_OK(reader->ReadChunk(sum.chunks[i], out, dec, DescribeChunk(i, "rank-00002.dss")));
    EXPECT_EQ(out, chunks[i]) << "chunk " << i;
  }
  EXPECT_THAT(ShardReader::Open(env, path, 5),
              StatusIs(StatusCode::kCorruption, HasSubstr("header says rank 2 but the manifest "
                                                          "expects rank 5")));

  // Flip one stored byte of chunk 1: its read names the chunk.
  {
    DS_ASSERT_OK_AND_ASSIGN(auto f, env->OpenFile(path, {io::OpenMode::kUpdate}));
    std::byte b[1];
    uint64_t at = sum.chunks[1].offset + sum.chunks[1].stored_len / 2;
    ASSERT_TRUE(f->ReadAt(at, b).ok());
    b[0] ^= std::byte{0x10};
    DS_ASSERT_OK(f->WriteAt(at, b));
    DS_ASSERT_OK(f->Close());
  }
  DS_ASSERT_OK_AND_ASSIGN(reader, ShardReader::Open(env, path, 2));
  std::vector<std::byte> out(sum.chunks[1].raw_len);
  EXPECT_THAT(reader->ReadChunk(sum.chunks[1], out, dec, "chunk 1 of rank-00002.dss"),
              StatusIs(StatusCode::kCorruption, HasSubstr("chunk 1 of rank-00002.dss")));

  // Truncate the file inside the last chunk: bounds say so before any read.
  {
    DS_ASSERT_OK_AND_ASSIGN(auto f, env->OpenFile(path, {io::OpenMode::kUpdate}));
    DS_ASSERT_OK(f->Truncate(sum.chunks[4].offset + 100));
    DS_ASSERT_OK(f->Close());
  }
  DS_ASSERT_OK_AND_ASSIGN(reader, ShardReader::Open(env, path, 2));
  out.resize(sum.chunks[4].raw_len);
  EXPECT_THAT(reader->ReadChunk(sum.chunks[4], out, dec, "chunk 4 of rank-00002.dss"),
              StatusIs(StatusCode::kCorruption, AllOf(HasSubstr("chunk 4 of rank-00002.dss"),
                                                      HasSubstr("run past the end of the file"))));
}

INSTANTIATE_TEST_SUITE_P(AllCodecs, ShardRoundTrip,
                         ::testing::Combine(::testing::Values("mem", "posix"),
                                            ::testing::Values(Codec::kRaw, Codec::kZstd,
                                                              Codec::kByteGroupZstd)),
                         [](const auto& info) {
                           std::string c(CodecName(std::get<1>(info.param)));
                           for (char& ch : c) ch = ch == '+' ? '_' : ch;
                           return std::get<0>(info.param) + "_" + c;
                         });

TEST(ShardWriterTest, DiskFullIsReportedWithTheFile) {
  io::MemEnv mem;
  io::FaultEnv env(&mem);
  testing::TempDir dir(&env);
  Rig rig("pwrite");
  env.AddRule({io::kFaultWrite, "*rank-00000.dss", 2, -1, io::FaultKind::kNoSpace});
  DS_ASSERT_OK_AND_ASSIGN(auto writer, ShardWriter::Create(&env, dir.Join("rank-00000.dss"), 0,
                                                           rig.Options(Codec::kRaw)));
  std::vector<std::byte> data(1 << 16, std::byte{1});
  for (int i = 0; i < 4; ++i) writer->AddChunk(data, 4);
  EXPECT_THAT(writer->Finish(), StatusIs(StatusCode::kNoSpace, AllOf(HasSubstr("writing chunk"),
                                                                     HasSubstr("rank-00000.dss"))));
}

}  // namespace
}  // namespace ds::fmt
