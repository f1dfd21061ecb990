// Resharding: the target layout is what a direct save at that layout writes, round trips are
// bit-exact, every source chunk is read once, and bad requests and failures change nothing.
#include "ckpt/reshard.h"

#include "ckpt/catalog.h"
#include "ckpt/save_util.h"
#include "ckpt/verify.h"
#include "io/fault_env.h"
#include "io/mem_env.h"
#include "testing/matchers.h"

namespace ds::ckpt {
namespace {

using ::ds::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

ReshardOptions To(uint32_t world, uint32_t stage, uint32_t tp = 1) {
  ReshardOptions o;
  o.layout = {world, stage, tp, 1};
  o.memory_bytes = 1 << 20;
  o.chunk_bytes = 4096;
  o.io_backend = "pwrite";
  o.threads = 2;
  return o;
}

TEST(ReshardTest, LayoutSlicesIsWhatADirectSaveWrites) {
  const auto state = SampleState();
  for (Layout l : {Layout{1, 0, 1}, Layout{3, 1, 1}, Layout{8, 2, 1}, Layout{5, 3, 1},
                   Layout{4, 1, 2}, Layout{2, 3, 2}, Layout{6, 2, 2}}) {
    io::MemEnv env;
    InProcessStore store;
    SaveOutcome out = SaveAll(&env, state, l, 1, TestWriterOptions("/c"), &store);
    ASSERT_TRUE(out.status[0].ok()) << out.status[0].ToString();
    DS_ASSERT_OK_AND_ASSIGN(auto reader, CheckpointReader::Open(&env, "/c/step-00000001"));
    DS_ASSERT_OK_AND_ASSIGN(auto slices,
                            LayoutSlices(reader->manifest(), {l.world, l.stage, l.tp, 1}));
    const auto saved = SlicesByRank(reader->manifest());
    for (uint32_t r = 0; r < l.world; ++r) {
      EXPECT_EQ(DescribeSlices(slices[r]), DescribeSlices(saved[r]))
          << "world " << l.world << " stage " << l.stage << " tp " << l.tp << " rank " << r;
    }
  }
}

TEST(ReshardTest, RoundTripsAreBitExactAndMatchADirectSave) {
  const auto state = SampleState();
  int pairs = 0;
  for (uint32_t world = 1; world <= 8; ++world) {
    for (uint32_t stage = 0; stage <= 3; ++stage) {
      const uint32_t to_world = world % 8 + 1, to_stage = (stage + 1) % 4;
      io::MemEnv env;
      InProcessStore store;
      SaveOutcome out = SaveAll(&env, state, {world, stage, 1}, 1, TestWriterOptions("/c"), &store);
      ASSERT_TRUE(out.status[0].ok()) << out.status[0].ToString();
      const std::string src = "/c/step-00000001";
      DS_ASSERT_OK_AND_ASSIGN(ReshardResult there, Reshard(&env, src, To(to_world, to_stage)));
      EXPECT_EQ(there.tag,
                "step-00000001-w" + std::to_string(to_world) + "s" + std::to_string(to_stage));
      EXPECT_EQ(there.source_chunks_read, there.source_chunks) << "each source chunk once";
      DS_ASSERT_OK(LoadAndCompare(&env, there.path, state, {to_world, to_stage, 1}));
      DS_ASSERT_OK_AND_ASSIGN(VerifyReport v, VerifyCheckpoint(&env, there.path));
      EXPECT_TRUE(v.healthy);
      // Equal to what a direct save at the target layout writes.
      SaveOutcome direct =
          SaveAll(&env, state, {to_world, to_stage, 1}, 2, TestWriterOptions("/d"), &store);
      ASSERT_TRUE(direct.status[0].ok());
      DS_ASSERT_OK_AND_ASSIGN(auto a, CheckpointReader::Open(&env, there.path));
      DS_ASSERT_OK_AND_ASSIGN(auto b, CheckpointReader::Open(&env, "/d/step-00000002"));
      const auto sa = SlicesByRank(a->manifest()), sb = SlicesByRank(b->manifest());
      for (uint32_t r = 0; r < to_world; ++r)
        EXPECT_EQ(DescribeSlices(sa[r]), DescribeSlices(sb[r]));
      EXPECT_EQ(a->manifest().info.world_size, to_world);
      EXPECT_EQ(a->manifest().info.zero_stage, to_stage);
      EXPECT_EQ(a->manifest().blobs.size(), b->manifest().blobs.size() - to_world + world);
      // And back.
      ReshardOptions back = To(world, stage);
      back.out = "/c/back";
      DS_ASSERT_OK_AND_ASSIGN(ReshardResult home, Reshard(&env, there.path, back));
      DS_ASSERT_OK(LoadAndCompare(&env, home.path, state, {world, stage, 1}));
      DS_ASSERT_OK_AND_ASSIGN(auto c, CheckpointReader::Open(&env, home.path));
      DS_ASSERT_OK_AND_ASSIGN(auto orig, CheckpointReader::Open(&env, src));
      const auto sc = SlicesByRank(c->manifest()), so = SlicesByRank(orig->manifest());
      for (uint32_t r = 0; r < world; ++r) EXPECT_EQ(DescribeSlices(sc[r]), DescribeSlices(so[r]));
      ++pairs;
    }
  }
  std::printf("reshard round trips: %d\n", pairs);
}

TEST(ReshardTest, TensorParallelDegreesChange) {
  const auto state = SampleState();
  io::MemEnv env;
  InProcessStore store;
  ASSERT_TRUE(SaveAll(&env, state, {4, 1, 2}, 1, TestWriterOptions("/c"), &store).status[0].ok());
  for (auto [w, s, t] : {std::tuple{1u, 0u, 1u}, {2u, 2u, 2u}, {6u, 1u, 2u}, {3u, 3u, 1u}}) {
    ReshardOptions o = To(w, s, t);
    o.out = "/c/w" + std::to_string(w) + "t" + std::to_string(t);
    DS_ASSERT_OK_AND_ASSIGN(ReshardResult r, Reshard(&env, "/c/step-00000001", o));
    DS_ASSERT_OK(LoadAndCompare(&env, r.path, state, {w, s, t})) << o.out;
  }
  ReshardOptions odd = To(6, 1, 3);  // 64 rows split 3 ways
  EXPECT_THAT(
      Reshard(&env, "/c/step-00000001", odd),
      StatusIs(StatusCode::kInvalidArgument,
               HasSubstr("dimension 0 of size 64 does not split into 3 tensor-parallel pieces")));
}

TEST(ReshardTest, BadRequestsChangeNothing) {
  const auto state = SampleState();
  io::MemEnv env;
  InProcessStore store;
  ASSERT_TRUE(SaveAll(&env, state, {2, 1, 1}, 1, TestWriterOptions("/c"), &store).status[0].ok());
  const std::string src = "/c/step-00000001";
  DS_ASSERT_OK_AND_ASSIGN(auto before, env.ListDir("/c"));
  EXPECT_THAT(
      Reshard(&env, src, To(4, 1, 2)),
      StatusIs(StatusCode::kInvalidArgument, HasSubstr("saved without tensor parallelism")));
  EXPECT_THAT(
      Reshard(&env, src, To(3, 1, 2)),
      StatusIs(StatusCode::kInvalidArgument, HasSubstr("does not divide the world size 3")));
  EXPECT_THAT(Reshard(&env, src, To(3, 5)),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("ZeRO stage 5 does not exist")));
  ReshardOptions exists = To(3, 1);
  exists.out = src;
  EXPECT_THAT(Reshard(&env, src, exists),
              StatusIs(StatusCode::kFailedPrecondition, HasSubstr("already exists")));
  env.SetCapacity(env.UsedBytes() + 1000);
  EXPECT_THAT(Reshard(&env, src, To(3, 1)),
              StatusIs(StatusCode::kNoSpace, AllOf(HasSubstr("needs about"), HasSubstr("free"))));
  env.SetCapacity(uint64_t{1} << 40);
  // A damaged source: the chunk is named, and no temp dir or checkpoint is left behind.
  DS_ASSERT_OK_AND_ASSIGN(auto reader, CheckpointReader::Open(&env, src));
  const fmt::ChunkMeta& c = reader->manifest().chunks[2];
  {
    auto f = env.OpenFile(io::JoinPath(src, reader->manifest().files[c.file].name),
                          {io::OpenMode::kUpdate});
    ASSERT_TRUE(f.ok());
    std::byte b[1] = {std::byte{0x77}};
    ASSERT_TRUE((*f)->WriteAt(c.offset + 1, b).ok());
  }
  EXPECT_THAT(Reshard(&env, src, To(3, 1)),
              StatusIs(StatusCode::kCorruption, HasSubstr("chunk 2 of rank-0000")));
  DS_ASSERT_OK_AND_ASSIGN(auto after, env.ListDir("/c"));
  EXPECT_EQ(after, before);
  Catalog cat(&env, "/c");
  DS_ASSERT_OK_AND_ASSIGN(auto latest, cat.ReadLatest());
  EXPECT_EQ(latest, "step-00000001");
}

// Names temp dirs with one known nonce, so a test can aim faults at the temp dir.
class FixedNonceEnv : public io::EnvWrapper {
 public:
  using EnvWrapper::EnvWrapper;
  std::string NewNonce() override { return "00000000000000aa"; }
};

// Every step that touches the temp dir (creating and locking it, each shard's open, writes,
// syncs and truncation, the manifest, the lock's removal, the rename) fails in turn: the
// reshard reports that failure and leaves the checkpoint directory as it found it.
TEST(ReshardTest, AFailureAtAnyStepInItsTempDirLeavesNothingBehind) {
  const auto state = SampleState();
  io::MemEnv mem;
  InProcessStore store;
  ASSERT_TRUE(SaveAll(&mem, state, {2, 1, 1}, 1, TestWriterOptions("/c"), &store).status[0].ok());
  const std::string src = "/c/step-00000001";
  DS_ASSERT_OK_AND_ASSIGN(auto before, mem.ListDir("/c"));
  FixedNonceEnv named(&mem);
  uint64_t failures = 0;
  for (uint64_t skip = 0;; ++skip) {
    io::FaultEnv env(&named);
    env.AddRule({.path_glob = "/c/.tmp-step-00000001-w3s1-00000000000000aa*", .skip = skip});
    Result<ReshardResult> r = Reshard(&env, src, To(3, 1));
    if (env.injected_count() == 0) {  // past the last step: nothing failed
      DS_ASSERT_OK(r.status());
      break;
    }
    ++failures;
    EXPECT_THAT(r.status(), StatusIs(StatusCode::kIOError, HasSubstr("injected fault")))
        << "failing step " << skip;
    DS_ASSERT_OK_AND_ASSIGN(auto after, mem.ListDir("/c"));
    EXPECT_EQ(after, before) << "failing step " << skip << ": " << r.status().ToString();
  }
  std::printf("reshard temp-dir steps failed in turn: %llu\n",
              static_cast<unsigned long long>(failures));
  EXPECT_GT(failures, 10u);
}

// Memory bounded by --memory whatever the model's size: reshard_memory_test.cc (its own binary,
// which counts every allocation).

}  // namespace
}  // namespace ds::ckpt
