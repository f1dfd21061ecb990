// The save pipeline and the load planner end to end: round trips at every layout, pointers,
// retention, backpressure, and every failure a user or the machine can cause.
#include "ckpt/writer.h"

#include <cstring>
#include <mutex>
#include <set>
#include <thread>

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

class WriterTest : public ::testing::Test {
 protected:
  io::MemEnv mem_;
  const std::string dir_ = "/ckpts";
  std::vector<testing::TestTensor> state_ = SampleState();
};

void ExpectAllOk(const SaveOutcome& o) {
  for (size_t r = 0; r < o.status.size(); ++r) {
    EXPECT_TRUE(o.status[r].ok()) << "rank " << r << ": " << o.status[r].ToString();
  }
}

TEST_F(WriterTest, SingleRankRoundTripEveryCodec) {
  for (fmt::Codec codec : {fmt::Codec::kRaw, fmt::Codec::kZstd, fmt::Codec::kByteGroupZstd}) {
    io::MemEnv env;
    InProcessStore store;
    WriterOptions o = TestWriterOptions(dir_);
    o.codec = codec;
    SaveOutcome out = SaveAll(&env, state_, {1, 0, 1}, 10, o, &store);
    ExpectAllOk(out);
    EXPECT_EQ(out.stats[0].tag, "step-00000010");
    EXPECT_EQ(out.stats[0].path, "/ckpts/step-00000010");
    Catalog cat(&env, dir_);
    DS_ASSERT_OK_AND_ASSIGN(std::string path, cat.Resolve("latest"));
    EXPECT_EQ(path, "/ckpts/step-00000010");
    DS_ASSERT_OK_AND_ASSIGN(VerifyReport v, VerifyCheckpoint(&env, path));
    EXPECT_TRUE(v.healthy) << (v.problems.empty() ? "" : v.problems[0]);
    DS_EXPECT_OK(LoadAndCompare(&env, path, state_, {1, 0, 1}));
    DS_ASSERT_OK_AND_ASSIGN(auto reader, CheckpointReader::Open(&env, path));
    DS_ASSERT_OK_AND_ASSIGN(std::string step, reader->ReadBlob("step"));
    EXPECT_EQ(step, "10");
    EXPECT_THAT(reader->ReadBlob("nope"), StatusIs(StatusCode::kNotFound, HasSubstr("'nope'")));
    DS_ASSERT_OK_AND_ASSIGN(auto names, env.ListDir(dir_));
    for (const auto& n : names) EXPECT_NE(n.rfind(".tmp-", 0), 0u) << n << " left behind";
  }
}

// Every source layout (world 1-8 x stage 0-3) loads into every destination layout.
TEST_F(WriterTest, LoadAnyWorldAndStageFromAny) {
  int combos = 0;
  for (uint32_t world : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u}) {
    for (uint32_t stage = 0; stage <= 3; ++stage) {
      io::MemEnv env;
      InProcessStore store;
      SaveOutcome out =
          SaveAll(&env, state_, {world, stage, 1}, 1, TestWriterOptions(dir_), &store);
      ExpectAllOk(out);
      const std::string path = "/ckpts/step-00000001";
      for (uint32_t dworld = 1; dworld <= 8; ++dworld) {
        for (uint32_t dstage = 0; dstage <= 3; ++dstage) {
          Status s = LoadAndCompare(&env, path, state_, {dworld, dstage, 1});
          ASSERT_TRUE(s.ok()) << "saved at world " << world << " stage " << stage
                              << ", loaded at world " << dworld << " stage " << dstage << ": "
                              << s.ToString();
          ++combos;
        }
      }
    }
  }
  std::printf("load layouts checked: %d\n", combos);
}

TEST_F(WriterTest, TensorParallelBoxesReshardBothWays) {
  for (auto [from, to] : {std::pair<Layout, Layout>{{2, 1, 2}, {1, 0, 1}},
                          {{4, 2, 2}, {3, 3, 1}},
                          {{1, 0, 1}, {4, 1, 2}},
                          {{4, 3, 2}, {2, 0, 2}}}) {
    io::MemEnv env;
    InProcessStore store;
    ExpectAllOk(SaveAll(&env, state_, from, 3, TestWriterOptions(dir_), &store));
    DS_EXPECT_OK(LoadAndCompare(&env, "/ckpts/step-00000003", state_, to))
        << "from world " << from.world << " tp " << from.tp << " to world " << to.world << " tp "
        << to.tp;
  }
}

TEST_F(WriterTest, BackpressureWhenStagingIsSmall) {
  InProcessStore store;
  std::vector<testing::TestTensor> big = {
      testing::MakeTensor("master/big", fmt::DType::kF32, {512, 512}, 9)};  // 1 MiB
  WriterOptions o = TestWriterOptions(dir_);
  o.chunk_bytes = 64 << 10;
  o.staging_bytes = 128 << 10;  // two chunks for sixteen
  SaveOutcome out = SaveAll(&mem_, big, {1, 0, 1}, 5, o, &store);
  ExpectAllOk(out);
  DS_EXPECT_OK(LoadAndCompare(&mem_, "/ckpts/step-00000005", big, {1, 0, 1}));
  EXPECT_EQ(out.stats[0].logical_bytes, 1u << 20);
}

// A save's stats say where its background part went: one write per chunk, and the checkpoint
// durable before retention (which only frees space) ran.
TEST_F(WriterTest, StatsAccountForTheWritesAndLeaveRetentionOutOfTheDurableTime) {
  InProcessStore store;
  std::vector<testing::TestTensor> big = {
      testing::MakeTensor("master/big", fmt::DType::kF32, {512, 512}, 9)};  // 1 MiB
  WriterOptions o = TestWriterOptions(dir_);
  o.chunk_bytes = 64 << 10;  // sixteen chunks
  o.retention.keep_last = 1;
  ExpectAllOk(SaveAll(&mem_, big, {1, 0, 1}, 1, o, &store));
  SaveOutcome out = SaveAll(&mem_, big, {1, 0, 1}, 2, o, &store);  // retires step 1
  ExpectAllOk(out);
  const SaveStats& s = out.stats[0];
  EXPECT_EQ(s.io_writes, 16u);
  EXPECT_GT(s.io_busy_seconds, 0.0);
  EXPECT_GE(s.io_mean_in_flight, 1.0);
  EXPECT_LE(s.io_mean_in_flight, o.io_queue_depth);
  EXPECT_GT(s.durable_seconds, 0.0);
  EXPECT_LE(s.durable_seconds + s.retention_seconds, s.total_seconds + 1e-6);
  EXPECT_GT(s.write_seconds, 0.0);
  EXPECT_LE(s.write_seconds, s.durable_seconds);
  Catalog cat(&mem_, dir_);
  DS_ASSERT_OK_AND_ASSIGN(auto list, cat.List());
  ASSERT_EQ(list.size(), 1u);
  EXPECT_EQ(list[0].tag, "step-00000002");
}

TEST_F(WriterTest, LatestBestAndRetention) {
  InProcessStore store;
  WriterOptions o = TestWriterOptions(dir_);
  o.best_metric = "eval_loss";
  o.retention.keep_last = 2;
  const double losses[] = {3.0, 1.0, 2.0, 2.5, 2.2};
  for (int i = 0; i < 5; ++i) {
    std::string metrics = "{\"eval_loss\": " + std::to_string(losses[i]) + "}";
    ExpectAllOk(SaveAll(&mem_, state_, {2, 1, 1}, 100 * (i + 1), o, &store, metrics));
  }
  Catalog cat(&mem_, dir_);
  DS_ASSERT_OK_AND_ASSIGN(auto latest, cat.ReadLatest());
  EXPECT_EQ(latest, "step-00000500");
  DS_ASSERT_OK_AND_ASSIGN(auto best, cat.ReadBest());
  ASSERT_TRUE(best.has_value());
  EXPECT_EQ(best->tag, "step-00000200");  // eval_loss 1.0
  DS_ASSERT_OK_AND_ASSIGN(auto list, cat.List());
  std::vector<std::string> tags;
  for (const auto& e : list) tags.push_back(e.tag);
  // The last two, plus best, which retention never removes.
  EXPECT_THAT(tags, ::testing::ElementsAre("step-00000200", "step-00000400", "step-00000500"));
}

TEST_F(WriterTest, SameTagTwiceNeverReplacesACommittedCheckpoint) {
  InProcessStore store;
  ExpectAllOk(SaveAll(&mem_, state_, {1, 0, 1}, 7, TestWriterOptions(dir_), &store));
  auto again = state_;
  again[0] = testing::MakeTensor("master/wte", fmt::DType::kF32, {64, 48}, 99);
  SaveOutcome out = SaveAll(&mem_, again, {1, 0, 1}, 7, TestWriterOptions(dir_), &store);
  ExpectAllOk(out);
  EXPECT_EQ(out.stats[0].tag, "step-00000007.1");
  DS_EXPECT_OK(LoadAndCompare(&mem_, "/ckpts/step-00000007", state_, {1, 0, 1}));
  DS_EXPECT_OK(LoadAndCompare(&mem_, "/ckpts/step-00000007.1", again, {1, 0, 1}));
  Catalog cat(&mem_, dir_);
  DS_ASSERT_OK_AND_ASSIGN(auto latest, cat.ReadLatest());
  EXPECT_EQ(latest, "step-00000007.1");
}

// ENOSPC and EIO during a save: a clear error naming the file, the previous checkpoint and the
// pointers intact, no temp dir left, and the next save works.
TEST_F(WriterTest, DiskFullAndIoErrorsLeaveCommittedStateIntact) {
  struct Case {
    const char* glob;
    uint32_t ops;
    io::FaultKind kind;
    StatusCode code;
    const char* text;
  };
  for (const Case& c : {Case{"*rank-00001.dss", io::kFaultWrite, io::FaultKind::kNoSpace,
                             StatusCode::kNoSpace, "rank-00001.dss"},
                        Case{"*manifest.h5", io::kFaultWrite, io::FaultKind::kIOError,
                             StatusCode::kIOError, "manifest.h5"},
                        Case{"*rank-00000.dss", io::kFaultSync, io::FaultKind::kIOError,
                             StatusCode::kIOError, "fsync"},
                        Case{"*/ckpts", io::kFaultSyncDir, io::FaultKind::kIOError,
                             StatusCode::kIOError, "syncdir"}}) {
    io::MemEnv mem;
    io::FaultEnv env(&mem);
    InProcessStore store;
    ExpectAllOk(SaveAll(&env, state_, {2, 2, 1}, 1, TestWriterOptions(dir_), &store));
    env.AddRule({c.ops, c.glob, 0, 1, c.kind});
    SaveOutcome bad = SaveAll(&env, state_, {2, 2, 1}, 2, TestWriterOptions(dir_), &store);
    EXPECT_THAT(bad.status[0], StatusIs(c.code, HasSubstr(c.text))) << c.glob;
    EXPECT_FALSE(bad.status[1].ok()) << c.glob;  // the other rank hears of it
    env.ClearRules();
    Catalog cat(&env, dir_);
    DS_ASSERT_OK_AND_ASSIGN(auto latest, cat.ReadLatest());
    EXPECT_EQ(latest, "step-00000001") << c.glob;
    DS_EXPECT_OK(LoadAndCompare(&env, "/ckpts/step-00000001", state_, {1, 0, 1}));
    DS_ASSERT_OK_AND_ASSIGN(auto names, env.ListDir(dir_));
    for (const auto& n : names) EXPECT_NE(n.rfind(".tmp-", 0), 0u) << c.glob << ": " << n;
    ExpectAllOk(SaveAll(&env, state_, {2, 2, 1}, 3, TestWriterOptions(dir_), &store));
    DS_ASSERT_OK_AND_ASSIGN(latest, cat.ReadLatest());
    EXPECT_EQ(latest, "step-00000003");
  }
}

TEST_F(WriterTest, ARankThatNeverReportsFailsTheSaveByNumber) {
  InProcessStore store;
  WriterOptions o = TestWriterOptions(dir_);
  o.timeout_micros = 300'000;
  std::vector<Status> st(3);
  std::vector<std::thread> threads;
  for (uint32_t rank = 0; rank < 2; ++rank) {  // rank 2 died before the save
    threads.emplace_back([&, rank] {
      WriterOptions ro = o;
      ro.rank = rank;
      ro.world_size = 3;
      ro.store = &store;
      auto w = CheckpointWriter::Create(&mem_, ro);
      ASSERT_TRUE(w.ok());
      SaveRequest req;
      req.step = 4;
      Status s = (*w)->Begin(req);
      if (s.ok()) s = (*w)->Snapshot().status();
      if (s.ok()) s = (*w)->Commit()->Wait();
      st[rank] = s;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_THAT(st[0], StatusIs(StatusCode::kUnavailable,
                              AllOf(HasSubstr("rank(s) 2 never reported"), HasSubstr("dead"))));
  EXPECT_THAT(st[1], StatusIs(StatusCode::kIOError, HasSubstr("rank(s) 2 never reported")));
  DS_ASSERT_OK_AND_ASSIGN(auto names, mem_.ListDir(dir_));
  for (const auto& n : names) EXPECT_NE(n.rfind(".tmp-", 0), 0u) << n;
}

TEST_F(WriterTest, AFailedSnapshotOnOneRankEndsTheSaveEverywhere) {
  InProcessStore store;
  std::vector<Status> st(2);
  std::vector<std::thread> threads;
  for (uint32_t rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      WriterOptions o = TestWriterOptions(dir_);
      o.rank = rank;
      o.world_size = 2;
      o.store = &store;
      auto w = CheckpointWriter::Create(&mem_, o);
      ASSERT_TRUE(w.ok());
      SaveRequest req;
      req.step = 8;
      Status s = (*w)->Begin(req);
      SaveSlice sl{"t" + std::to_string(rank), fmt::DType::kF32, {4}, {}, {}, 0, 4, {}};
      sl.source.fill = [rank](uint64_t, std::span<std::byte> dst) {
        if (rank == 1) return Status::IOError("device copy failed");
        std::memset(dst.data(), 0, dst.size());
        return Status::OK();
      };
      if (s.ok()) s = (*w)->AddSlice(sl);
      if (s.ok()) s = (*w)->Snapshot().status();
      if (s.ok()) s = (*w)->Commit()->Wait();
      st[rank] = s;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_THAT(st[1], StatusIs(StatusCode::kIOError, HasSubstr("device copy failed")));
  EXPECT_THAT(st[0], StatusIs(StatusCode::kIOError, AllOf(HasSubstr("failed on rank 1"),
                                                          HasSubstr("device copy failed"))));
}

// SnapshotMode::kFinishInBackground: fillers only *start* their copies (as a GPU's async
// device-to-host copies do); Snapshot returns before any completes, and the background part
// waits for them (sync, on its own thread) before the chunks are encoded. kInBackground: the
// fillers themselves run on the background thread, after Snapshot has returned.
TEST_F(WriterTest, DeferredSyncFinishesTheCopiesInTheBackground) {
  for (auto mode : {CheckpointWriter::SnapshotMode::kFinishInBackground,
                    CheckpointWriter::SnapshotMode::kInBackground}) {
    const bool fills_later = mode == CheckpointWriter::SnapshotMode::kInBackground;
    SCOPED_TRACE(fills_later ? "kInBackground" : "kFinishInBackground");
    io::MemEnv env;
    std::vector<float> state(40'000);
    for (size_t i = 0; i < state.size(); ++i) state[i] = static_cast<float>(i) * 0.5f;
    std::mutex mu;
    std::vector<std::pair<std::span<std::byte>, uint64_t>> started;  // (destination, offset)
    std::set<std::thread::id> fill_threads;
    std::thread::id sync_thread;
    int syncs = 0;
    WriterOptions o = TestWriterOptions(dir_);
    o.chunk_bytes = 16 << 10;  // ten chunks
    DS_ASSERT_OK_AND_ASSIGN(auto w, CheckpointWriter::Create(&env, o));
    SaveRequest req;
    req.step = 4;
    DS_ASSERT_OK(w->Begin(req));
    SaveSlice sl{"master/w", fmt::DType::kF32, {40'000}, {}, {}, 0, 40'000, {}};
    sl.source.fill = [&](uint64_t offset, std::span<std::byte> dst) {
      std::lock_guard<std::mutex> lock(mu);
      std::memset(dst.data(), 0xEE, dst.size());  // what staging holds until the copy "lands"
      started.push_back({dst, offset});
      fill_threads.insert(std::this_thread::get_id());
      return Status::OK();
    };
    auto sync = [&]() -> Status {
      std::lock_guard<std::mutex> lock(mu);
      for (auto& [dst, offset] : started) {
        std::memcpy(dst.data(), reinterpret_cast<const std::byte*>(state.data()) + offset,
                    dst.size());
      }
      started.clear();
      sync_thread = std::this_thread::get_id();
      ++syncs;
      return Status::OK();
    };
    DS_ASSERT_OK(w->AddSlice(sl));
    DS_ASSERT_OK_AND_ASSIGN(SaveStats snap, w->Snapshot(sync, mode));
    EXPECT_EQ(snap.logical_bytes, 160'000u);
    {
      std::lock_guard<std::mutex> lock(mu);
      EXPECT_EQ(syncs, 0) << "Snapshot waited for the copies";
      EXPECT_EQ(started.size(), fills_later ? 0u : 10u);
    }
    auto handle = w->Commit();
    DS_ASSERT_OK(handle->Wait());
    EXPECT_EQ(syncs, 1);
    EXPECT_NE(sync_thread, std::this_thread::get_id());
    EXPECT_EQ(fill_threads.count(std::this_thread::get_id()), fills_later ? 0u : 1u);
    EXPECT_GE(handle->stats().copies_done_seconds, snap.snapshot_seconds);
    EXPECT_GT(handle->stats().copies_done_seconds, 0.0);  // set once the copies were synced
    DS_ASSERT_OK_AND_ASSIGN(auto reader, CheckpointReader::Open(&env, handle->stats().path));
    std::vector<float> back(state.size());
    std::vector<ReadRequest> q = {
        {{"master/w", {}, {}, 0, 40'000}, std::as_writable_bytes(std::span(back)), nullptr}};
    DS_ASSERT_OK(reader->Read(q).status());
    EXPECT_EQ(back, state);
  }
}

// Host memory is only valid until Snapshot returns: a background copy of it is refused.
TEST_F(WriterTest, BackgroundCopiesOfHostMemoryAreRefused) {
  DS_ASSERT_OK_AND_ASSIGN(auto w, CheckpointWriter::Create(&mem_, TestWriterOptions(dir_)));
  SaveRequest req;
  req.step = 6;
  DS_ASSERT_OK(w->Begin(req));
  std::vector<std::byte> bytes(64);
  SaveSlice sl{"master/h", fmt::DType::kF32, {16}, {}, {}, 0, 16, {}};
  sl.source.host = bytes;
  DS_ASSERT_OK(w->AddSlice(sl));
  EXPECT_THAT(
      w->Snapshot(nullptr, CheckpointWriter::SnapshotMode::kInBackground),
      StatusIs(StatusCode::kFailedPrecondition, AllOf(HasSubstr("master/h"), HasSubstr("kNow"))));
}

// A deferred copy that fails (a device error found at the sync) fails the save and commits nothing.
TEST_F(WriterTest, AFailedDeferredSyncFailsTheSave) {
  DS_ASSERT_OK_AND_ASSIGN(auto w, CheckpointWriter::Create(&mem_, TestWriterOptions(dir_)));
  SaveRequest req;
  req.step = 5;
  DS_ASSERT_OK(w->Begin(req));
  SaveSlice sl{"master/w", fmt::DType::kF32, {1024}, {}, {}, 0, 1024, {}};
  sl.source.fill = [](uint64_t, std::span<std::byte>) { return Status::OK(); };
  DS_ASSERT_OK(w->AddSlice(sl));
  DS_ASSERT_OK(w->Snapshot([] { return Status::IOError("an illegal memory access"); },
                           CheckpointWriter::SnapshotMode::kFinishInBackground)
                   .status());
  EXPECT_THAT(w->Commit()->Wait(),
              StatusIs(StatusCode::kIOError, AllOf(HasSubstr("finishing the snapshot's copies"),
                                                   HasSubstr("an illegal memory access"))));
  Catalog cat(&mem_, dir_);
  EXPECT_THAT(cat.Resolve("latest"), StatusIs(StatusCode::kNotFound, HasSubstr("latest")));
}

TEST_F(WriterTest, BadSlicesAndCallsAreRefused) {
  auto w = CheckpointWriter::Create(&mem_, TestWriterOptions(dir_));
  ASSERT_TRUE(w.ok());
  SaveSlice sl{"w", fmt::DType::kF32, {4, 4}, {0, 0}, {4, 4}, 0, 16, {}};
  EXPECT_THAT((*w)->AddSlice(sl), StatusIs(StatusCode::kFailedPrecondition, HasSubstr("Begin")));
  SaveRequest req;
  req.step = 1;
  DS_ASSERT_OK((*w)->Begin(req));
  std::vector<std::byte> bytes(64);
  sl.source.host = bytes;
  sl.box_offset = {1, 0};
  EXPECT_THAT((*w)->AddSlice(sl),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("outside the shape")));
  sl.box_offset = {0, 0};
  sl.flat_end = 17;
  EXPECT_THAT((*w)->AddSlice(sl),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("flat range [0, 17)")));
  sl.flat_end = 8;
  EXPECT_THAT((*w)->AddSlice(sl), StatusIs(StatusCode::kInvalidArgument,
                                           HasSubstr("64 bytes given for a slice of 32")));
  EXPECT_THAT(CheckpointWriter::Create(&mem_,
                                       [] {
                                         auto o = TestWriterOptions("/x");
                                         o.world_size = 2;
                                         o.rank = 0;
                                         return o;
                                       }()),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("needs a KeyValueStore")));
  SaveRequest bad;
  bad.tag = "../escape";
  DS_ASSERT_OK_AND_ASSIGN(auto w2, CheckpointWriter::Create(&mem_, TestWriterOptions(dir_)));
  EXPECT_THAT(w2->Begin(bad),
              StatusIs(StatusCode::kInvalidArgument, HasSubstr("cannot be a checkpoint tag")));
}

TEST_F(WriterTest, PlannerRefusesWhatTheCheckpointDoesNotHave) {
  InProcessStore store;
  ExpectAllOk(SaveAll(&mem_, state_, {2, 1, 1}, 1, TestWriterOptions(dir_), &store));
  DS_ASSERT_OK_AND_ASSIGN(auto reader, CheckpointReader::Open(&mem_, "/ckpts/step-00000001"));
  std::vector<std::byte> buf(16);
  std::vector<ReadRequest> q = {{{"nope", {}, {}, 0, 4}, buf, nullptr}};
  EXPECT_THAT(reader->Read(q), StatusIs(StatusCode::kNotFound, HasSubstr("no tensor 'nope'")));
  q = {{{"master/wte", {0, 0}, {65, 48}, 0, 4}, buf, nullptr}};
  EXPECT_THAT(reader->Read(q), StatusIs(StatusCode::kInvalidArgument,
                                        HasSubstr("box offset [0, 0] length [65, 48] is outside")));
  q = {{{"master/wte", {}, {}, 0, 8}, buf, nullptr}};
  EXPECT_THAT(reader->Read(q), StatusIs(StatusCode::kInvalidArgument,
                                        HasSubstr("the buffer has 16 bytes but the slice has 32")));
  // Loading one tensor reads only its chunks.
  DS_ASSERT_OK_AND_ASSIGN(
      LoadPlan plan, MakeLoadPlan(reader->manifest(),
                                  std::vector<WantedSlice>{{"master/ln.weight", {}, {}, 0, 48}}));
  EXPECT_LE(plan.chunks.size(), 2u);
  EXPECT_LT(plan.raw_bytes_read, 2 * 4096u);
}

}  // namespace
}  // namespace ds::ckpt
