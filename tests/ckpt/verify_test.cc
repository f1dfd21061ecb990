// verify and inspect: a healthy checkpoint passes; each kind of damage is found and named by
// chunk, file and tensor; what is not a file where a shard should be (a directory, a FIFO) is
// damage, never a hang.
#include "ckpt/verify.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <future>
#include <optional>
#include <thread>

#include "ckpt/catalog.h"
#include "ckpt/inspect.h"
#include "ckpt/reader.h"
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

// Open every shard the way a load does: the reader's error for the first one that fails.
Status ReadAllChunks(io::Env* env, const std::string& dir) {
  ReaderOptions o;
  o.io_backend = "pwrite";
  o.threads = 2;
  DS_ASSIGN_OR_RETURN(std::unique_ptr<CheckpointReader> reader,
                      CheckpointReader::Open(env, dir, o));
  std::vector<uint64_t> all(reader->manifest().chunks.size());
  for (uint64_t i = 0; i < all.size(); ++i) all[i] = i;
  return reader->ForEachChunk(all,
                              [](uint64_t, std::span<const std::byte>) { return Status::OK(); });
}

// A shard missing, or a directory in its place, is damage of the checkpoint (Corruption, so a
// resume with --fallback goes back to an earlier one), not an I/O error; verify reports it.
TEST_P(VerifyTest, AShardThatIsADirectoryOrMissingIsDamage) {
  DS_ASSERT_OK(ReadAllChunks(&env_, dir_));
  DS_ASSERT_OK(env_.RemoveFile(io::JoinPath(dir_, "rank-00001.dss")));
  EXPECT_THAT(ReadAllChunks(&env_, dir_),
              StatusIs(StatusCode::kCorruption,
                       HasSubstr("checkpoint /ckpts/step-00000007: rank-00001.dss (rank 1) is "
                                 "missing, though its manifest lists it")));
  DS_ASSERT_OK(env_.CreateDir(io::JoinPath(dir_, "rank-00001.dss")));
  const std::string what = "/ckpts/step-00000007/rank-00001.dss is a directory, not a regular file";
  EXPECT_THAT(ReadAllChunks(&env_, dir_), StatusIs(StatusCode::kCorruption, HasSubstr(what)));
  DS_ASSERT_OK_AND_ASSIGN(VerifyReport r, VerifyCheckpoint(&env_, dir_));
  EXPECT_FALSE(r.healthy);
  EXPECT_THAT(r.problems, Contains(AllOf(HasSubstr("rank-00001.dss (rank 1): "), HasSubstr(what))));
  DS_ASSERT_OK_AND_ASSIGN(CheckpointSummary s, InspectCheckpoint(&env_, dir_));
  EXPECT_FALSE(s.healthy);
  EXPECT_THAT(s.problems, Contains(HasSubstr(what)));
}

// inspect reads the shard headers (a damaged one is a problem) but no chunk: what it cannot see
// it does not claim (healthy means "no problem in what was checked"; the CLI says "not
// verified").
TEST_P(VerifyTest, InspectSeesShardHeadersButNotChunks) {
  const fmt::ChunkMeta& c = manifest_.chunks.back();
  Flip("rank-00001.dss", c.offset + c.stored_len / 2);
  DS_ASSERT_OK_AND_ASSIGN(CheckpointSummary chunk, InspectCheckpoint(&env_, dir_));
  EXPECT_TRUE(chunk.healthy);
  Flip("rank-00000.dss", 100);
  DS_ASSERT_OK_AND_ASSIGN(CheckpointSummary header, InspectCheckpoint(&env_, dir_));
  EXPECT_FALSE(header.healthy);
  EXPECT_THAT(header.problems,
              ElementsAre("rank-00000.dss (rank 0): rank-00000.dss: shard header fails its "
                          "checksum (file damaged)"));
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

// ---- the real filesystem: a FIFO where a file should be must not block a tool.

// Runs `fn` on a thread and waits up to 10 s for it; a regression that blocks fails the test
// instead of hanging it (`unblock` then releases the thread, e.g. by opening the FIFO).
template <typename T>
std::optional<T> WithinTenSeconds(std::function<T()> fn, const std::function<void()>& unblock) {
  auto result = std::make_shared<std::promise<T>>();
  std::future<T> done = result->get_future();
  std::thread([fn = std::move(fn), result] { result->set_value(fn()); }).detach();
  if (done.wait_for(std::chrono::seconds(10)) == std::future_status::ready) return done.get();
  unblock();
  done.wait();
  return std::nullopt;
}

class FifoTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ckpt_ = tmp_.Join("step-00000007");
    ASSERT_TRUE(testing::WriteTestCheckpoint(env_, ckpt_, Tensors(), 2, fmt::Codec::kRaw).ok());
  }
  // Replaces `name` with a FIFO nobody writes to.
  std::string MakeFifo(const std::string& name) {
    const std::string path = io::JoinPath(ckpt_, name);
    EXPECT_TRUE(env_->RemoveFile(path).ok());
    EXPECT_EQ(::mkfifo(path.c_str(), 0644), 0) << std::strerror(errno);
    return path;
  }
  // Opens the FIFO for writing, which lets a reader blocked in open() go on.
  static void Release(const std::string& fifo) {
    int fd = ::open(fifo.c_str(), O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) ::close(fd);
  }
  io::Env* env_ = io::Env::Default();
  testing::TempDir tmp_;
  std::string ckpt_;
};

TEST_F(FifoTest, AShardThatIsAFifoIsDamageNotAHang) {
  const std::string fifo = MakeFifo("rank-00001.dss");
  std::optional<Result<VerifyReport>> r = WithinTenSeconds<Result<VerifyReport>>(
      [&] { return VerifyCheckpoint(env_, ckpt_, {2}); }, [&] { Release(fifo); });
  ASSERT_TRUE(r.has_value()) << "verify blocked on a FIFO in place of a shard";
  DS_ASSERT_OK(*r);
  EXPECT_FALSE((*r)->healthy);
  EXPECT_THAT((*r)->problems, Contains(HasSubstr("rank-00001.dss is a FIFO, not a regular file")));
  std::optional<Status> read =
      WithinTenSeconds<Status>([&] { return ReadAllChunks(env_, ckpt_); }, [&] { Release(fifo); });
  ASSERT_TRUE(read.has_value()) << "the reader blocked on a FIFO in place of a shard";
  EXPECT_THAT(*read, StatusIs(StatusCode::kCorruption,
                              AllOf(HasSubstr("checkpoint " + ckpt_),
                                    HasSubstr("rank-00001.dss is a FIFO, not a regular file"))));
  std::optional<Result<CheckpointSummary>> s = WithinTenSeconds<Result<CheckpointSummary>>(
      [&] { return InspectCheckpoint(env_, ckpt_); }, [&] { Release(fifo); });
  ASSERT_TRUE(s.has_value()) << "inspect blocked on a FIFO in place of a shard";
  DS_ASSERT_OK(*s);
  EXPECT_THAT((*s)->problems, Contains(HasSubstr("rank-00001.dss is a FIFO, not a regular file")));
}

TEST_F(FifoTest, ALatestPointerThatIsAFifoIsNotAPointer) {
  const std::string fifo = tmp_.Join("latest");
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0644), 0) << std::strerror(errno);
  std::optional<Result<std::optional<std::string>>> latest =
      WithinTenSeconds<Result<std::optional<std::string>>>(
          [&] { return Catalog(env_, tmp_.path()).ReadLatest(); }, [&] { Release(fifo); });
  ASSERT_TRUE(latest.has_value()) << "reading a FIFO named latest blocked";
  EXPECT_THAT(*latest, StatusIs(StatusCode::kCorruption,
                                HasSubstr(fifo + " is a FIFO, not a regular file: not a pointer")));
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
