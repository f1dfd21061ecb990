// verify and inspect: a healthy checkpoint passes; each kind of damage is found and named by
// chunk, file and tensor.
#include "ckpt/verify.h"

#include "ckpt/inspect.h"
#include "io/mem_env.h"
#include "testing/checkpoint_builder.h"
#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<testing::TestTensor> Tensors() {
  return {testing::MakeTensor("master/wte", fmt::DType::kF32, {256, 64}, 1),
          testing::MakeTensor("master/ln.bias", fmt::DType::kF32, {64}, 2),
          testing::MakeTensor("model/wte", fmt::DType::kBF16, {256, 64}, 3),
          testing::MakeTensor("step", fmt::DType::kI64, {}, 4)};
}

class VerifyTest : public ::testing::TestWithParam<fmt::Codec> {
 protected:
  void SetUp() override {
    auto m = testing::WriteTestCheckpoint(&env_, dir_, Tensors(), 2, GetParam(), 16 << 10);
    ASSERT_TRUE(m.ok()) << m.status().ToString();
    manifest_ = *m;
  }
  // Flips one byte of a file in place.
  void Flip(const std::string& name, uint64_t offset) {
    auto f = env_.OpenFile(io::JoinPath(dir_, name), {io::OpenMode::kUpdate});
    ASSERT_TRUE(f.ok());
    std::byte b[1];
    ASSERT_TRUE((*f)->ReadAt(offset, b).ok());
    b[0] ^= std::byte{0x01};
    ASSERT_TRUE((*f)->WriteAt(offset, b).ok());
  }

  io::MemEnv env_;
  const std::string dir_ = "/ckpts/step-00000007";
  fmt::Manifest manifest_;
};

TEST_P(VerifyTest, HealthyCheckpointPasses) {
  DS_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyCheckpoint(&env_, dir_));
  EXPECT_TRUE(r.healthy) << (r.problems.empty() ? "" : r.problems.front());
  EXPECT_EQ(r.chunks_checked, manifest_.chunks.size());
  EXPECT_EQ(r.chunks_damaged, 0u);
  EXPECT_EQ(r.raw_bytes, (256 * 64 * 4 + 64 * 4 + 256 * 64 * 2 + 8));
  DS_ASSERT_OK_AND_ASSIGN(CheckpointSummary s, InspectCheckpoint(&env_, dir_));
  EXPECT_TRUE(s.healthy);
  EXPECT_EQ(s.tensors, 4u);
  EXPECT_EQ(s.largest_tensor, "master/wte");
  EXPECT_EQ(s.raw_bytes, r.raw_bytes);
}

TEST_P(VerifyTest, FlippedChunkByteNamesChunkFileAndTensor) {
  const fmt::ChunkMeta& c = manifest_.chunks[manifest_.chunks.size() - 1];  // rank 1's last
  Flip("rank-00001.dss", c.offset + c.stored_len / 2);
  DS_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyCheckpoint(&env_, dir_));
  EXPECT_FALSE(r.healthy);
  EXPECT_EQ(r.chunks_damaged, 1u);
  ASSERT_EQ(r.problems.size(), 1u);
  EXPECT_THAT(r.problems[0],
              AllOf(HasSubstr("chunk " + std::to_string(manifest_.chunks.size() - 1) +
                              " of rank-00001.dss"),
                    HasSubstr("[tensors:")));
  EXPECT_FALSE(r.damaged_tensors.empty());
}

TEST_P(VerifyTest, TruncatedAndMissingFilesAreProblems) {
  {
    auto f = env_.OpenFile(io::JoinPath(dir_, "rank-00000.dss"), {io::OpenMode::kUpdate});
    ASSERT_TRUE(f.ok());
    ASSERT_TRUE((*f)->Truncate(manifest_.files[0].size - 4096).ok());
  }
  DS_ASSERT_OK(env_.RemoveFile(io::JoinPath(dir_, "rank-00001.dss")));
  DS_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyCheckpoint(&env_, dir_));
  EXPECT_FALSE(r.healthy);
  EXPECT_THAT(r.problems, Contains(HasSubstr("rank-00000.dss has")));
  EXPECT_THAT(r.problems, Contains(HasSubstr("(truncated)")));
  EXPECT_THAT(r.problems, Contains(HasSubstr("rank-00001.dss (rank 1)")));
  EXPECT_THAT(r.problems, Contains(HasSubstr("its file cannot be read")));
  DS_ASSERT_OK_AND_ASSIGN(CheckpointSummary s, InspectCheckpoint(&env_, dir_));
  EXPECT_FALSE(s.healthy);
  EXPECT_THAT(s.problems, Contains(HasSubstr("rank-00001.dss (rank 1) is missing")));
}

TEST_P(VerifyTest, DamagedManifestAndShardHeader) {
  Flip("rank-00000.dss", 100);  // inside the header
  DS_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyCheckpoint(&env_, dir_));
  EXPECT_THAT(r.problems, Contains(HasSubstr("rank-00000.dss (rank 0): rank-00000.dss: shard "
                                             "header fails its checksum")));
  DS_ASSERT_OK(env_.WriteFileSynced(io::JoinPath(dir_, "manifest.h5"), "garbage"));
  DS_ASSERT_OK_AND_ASSIGN(r, VerifyCheckpoint(&env_, dir_));
  EXPECT_FALSE(r.healthy);
  EXPECT_THAT(r.problems, ElementsAre(HasSubstr("not a dstrain manifest")));
}

TEST_P(VerifyTest, NotACheckpoint) {
  EXPECT_THAT(VerifyCheckpoint(&env_, "/ckpts"),
              StatusIs(StatusCode::kNotFound, HasSubstr("/ckpts is not a checkpoint")));
  EXPECT_THAT(VerifyCheckpoint(&env_, "/nowhere"),
              StatusIs(StatusCode::kNotFound, HasSubstr("/nowhere does not exist")));
}

TEST_P(VerifyTest, SaveDirectoryListsCheckpointsAndTempDirs) {
  DS_ASSERT_OK(env_.CreateDir("/ckpts/.tmp-step-00000008-abcd"));
  DS_ASSERT_OK(env_.CreateDir("/ckpts/notes"));
  DS_ASSERT_OK(env_.WriteFileSynced("/ckpts/latest", "step-00000007\n"));
  DS_ASSERT_OK_AND_ASSIGN(SaveDirSummary s, InspectSaveDir(&env_, "/ckpts"));
  EXPECT_EQ(s.latest, "step-00000007");
  ASSERT_EQ(s.checkpoints.size(), 1u);
  EXPECT_EQ(s.checkpoints[0].info.tag, "step-00000007");
  EXPECT_THAT(s.in_progress, ElementsAre(".tmp-step-00000008-abcd"));
  EXPECT_THAT(s.not_checkpoints, ElementsAre("notes"));
}

INSTANTIATE_TEST_SUITE_P(Codecs, VerifyTest,
                         ::testing::Values(fmt::Codec::kRaw, fmt::Codec::kZstd,
                                           fmt::Codec::kByteGroupZstd),
                         [](const auto& info) {
                           std::string c(fmt::CodecName(info.param));
                           for (char& ch : c) ch = ch == '+' ? '_' : ch;
                           return c;
                         });

}  // namespace
}  // namespace ds::ckpt
